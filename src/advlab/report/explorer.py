"""The report's interactive explorer: pick an image and a model, move ε, watch the prediction flip.

Everything is precomputed by the study (:mod:`advlab.study.explorer`): numbers in ``metrics.json``'s
``explorer``, images in ``explorer.safetensors``, which this module encodes as PNG data URIs. The page stays
one self-contained file (no server, no request): the data sit in a ``<script type="application/json">``
block, and a few lines of JavaScript swap images and bars. The perturbation is drawn in the browser from the
two PNGs (8-bit images, so within 1/255 of the true perturbation), amplified so that ±ε spans black to white.
The probabilities shown are the stored ones, to the digit; the page shows them rounded to 0.1 %, and keeps
the stored values in ``data-p`` attributes (``tests/test_explorer.py`` reads both in Chromium).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from advlab.errors import AdvlabError
from advlab.report.figures import model_label
from advlab.tensor_files import load_tensors

CSS = """
#explorer .ex-controls{display:flex;flex-wrap:wrap;gap:.6em 1.4em;align-items:center;margin:.6em 0}
#explorer label{font-weight:600}#explorer select,#explorer input{font:inherit;margin-left:.4em}
#explorer input[type=range]{width:min(320px,70vw);vertical-align:middle}
#ex-images{display:flex;flex-wrap:wrap;gap:4px;margin:.6em 0}
#ex-images button{padding:2px;border:2px solid #dde2ea;background:#fff;border-radius:4px;cursor:pointer}
#ex-images button[aria-pressed=true]{border-color:#3a6fb0}
#ex-images img{width:40px;height:40px;image-rendering:pixelated;display:block}
#explorer :focus-visible{outline:3px solid #f0a000;outline-offset:2px}
.ex-view{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.ex-view figure{margin:0;text-align:center}.ex-view figcaption{max-width:160px}
.ex-view img,.ex-view canvas{width:140px;height:140px;image-rendering:pixelated;border:1px solid #dde2ea}
#ex-bars{list-style:none;padding:0;margin:0;min-width:min(340px,90vw)}
#ex-bars li{display:grid;grid-template-columns:9em 1fr 4em;gap:.5em;align-items:center;margin:.2em 0}
#ex-bars .bar{height:1em;background:#9bb3d3}#ex-bars li.predicted .bar{background:#3a6fb0}
#ex-bars li.true .name{font-weight:700}#ex-bars li.true .name::after{content:" ✓ true"}
#ex-bars .value{text-align:right;font-variant-numeric:tabular-nums}
#ex-verdict{font-weight:600}#ex-verdict.fooled{color:#c62828}#ex-verdict.held{color:#2e7d32}
"""

SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const $ = (id) => document.getElementById(id);
  const png = (b64) => "data:image/png;base64," + b64;
  const state = {model: 0, image: 0, eps: data.eps.length > 1 ? 1 : 0, mode: "untargeted", target: 0};
  const pct = (p) => (100 * p).toFixed(1) + "%";

  data.models.forEach((m, i) => $("ex-model").add(new Option(m.label, String(i))));
  data.classes.forEach((c, i) => $("ex-target").add(new Option(c, String(i))));
  $("ex-eps").max = String(data.eps.length - 1);
  $("ex-eps").value = String(state.eps);
  data.clean.forEach((b64, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = String(i);
    button.setAttribute("aria-pressed", "false");
    button.title = "image " + (i + 1) + ": " + data.classes[data.labels[i]];
    const img = document.createElement("img");
    img.src = png(b64);
    img.alt = button.title;
    button.appendChild(img);
    button.addEventListener("click", () => { state.image = i; render(); });
    $("ex-images").appendChild(button);
  });

  function drawPerturbation(cleanSrc, advSrc, eps) {
    const canvas = $("ex-delta");
    const ctx = canvas.getContext("2d");
    const a = new Image(), b = new Image();
    let loaded = 0;
    const draw = () => {
      if (++loaded < 2) return;
      canvas.width = a.naturalWidth; canvas.height = a.naturalHeight;
      ctx.drawImage(a, 0, 0);
      const ca = ctx.getImageData(0, 0, canvas.width, canvas.height);
      ctx.drawImage(b, 0, 0);
      const cb = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const out = ctx.createImageData(canvas.width, canvas.height);
      for (let k = 0; k < out.data.length; k += 4) {
        for (let c = 0; c < 3; c++) {
          const delta = (cb.data[k + c] - ca.data[k + c]) / 255;
          out.data[k + c] = eps > 0 ? Math.max(0, Math.min(255, Math.round(127.5 + 127.5 * delta / eps))) : 128;
        }
        out.data[k + 3] = 255;
      }
      ctx.putImageData(out, 0, 0);
    };
    a.onload = draw; b.onload = draw;
    a.src = cleanSrc; b.src = advSrc;
  }

  function render() {
    const targeted = state.mode === "targeted";
    const label = data.labels[state.image];
    let adv, classes, probs, eps, verdict, fooled;
    if (targeted) {
      const t = data.targeted;
      adv = t.adv[state.image][state.target];
      classes = t.top_classes[state.image][state.target];
      probs = t.top_probs[state.image][state.target];
      eps = t.eps;
      const reached = t.reached[state.image][state.target];
      fooled = state.target !== label && reached;
      verdict = state.target === label ? "the target is the true class: nothing to do"
        : (reached ? "driven to " : "not driven to ") + data.classes[state.target] + " (" + t.attack + " on " +
          t.label + ", ε = " + eps + ")";
    } else {
      const m = data.models[state.model];
      adv = m.adv[state.eps][state.image];
      classes = m.top_classes[state.eps][state.image];
      probs = m.top_probs[state.eps][state.image];
      eps = data.eps[state.eps];
      fooled = m.predictions[state.eps][state.image] !== label;
      verdict = (fooled ? "fooled: " : "held: ") + "predicted " + data.classes[classes[0]] + " (" + data.attack +
        ", ε = " + eps + ")";
    }
    $("ex-model").disabled = targeted;
    $("ex-eps").disabled = targeted;
    $("ex-target-wrap").hidden = !targeted;
    $("ex-eps").setAttribute("aria-valuetext", "ε = " + eps);
    $("ex-eps-value").textContent = "ε = " + eps;
    $("ex-clean").src = png(data.clean[state.image]);
    $("ex-clean").alt = "clean image, true class " + data.classes[label];
    $("ex-adv").src = png(adv);
    $("ex-adv").alt = "adversarial image at ε = " + eps;
    $("ex-delta-scale").textContent = eps > 0 ? "perturbation: mid-grey 0, white +" + eps + ", black −" + eps +
      " (×" + (1 / (2 * eps)).toFixed(1) + ")" : "no perturbation at ε = 0";
    drawPerturbation(png(data.clean[state.image]), png(adv), eps);
    $("ex-prediction").textContent = data.classes[classes[0]];
    $("ex-verdict").textContent = verdict;
    $("ex-verdict").className = fooled ? "fooled" : "held";
    const bars = $("ex-bars");
    bars.replaceChildren();
    classes.forEach((c, k) => {
      const li = document.createElement("li");
      li.dataset.class = data.classes[c];
      li.dataset.p = String(probs[k]);
      if (c === label) li.classList.add("true");
      if (k === 0) li.classList.add("predicted");
      const name = document.createElement("span"); name.className = "name"; name.textContent = data.classes[c];
      const track = document.createElement("span");
      const bar = document.createElement("span"); bar.className = "bar"; bar.style.display = "block";
      bar.style.width = (100 * probs[k]).toFixed(2) + "%";
      track.appendChild(bar);
      const value = document.createElement("span"); value.className = "value"; value.textContent = pct(probs[k]);
      li.append(name, track, value);
      bars.appendChild(li);
    });
    document.querySelectorAll("#ex-images button").forEach((b) =>
      b.setAttribute("aria-pressed", String(Number(b.dataset.index) === state.image)));
  }

  $("ex-model").addEventListener("change", (e) => { state.model = Number(e.target.value); render(); });
  $("ex-eps").addEventListener("input", (e) => { state.eps = Number(e.target.value); render(); });
  $("ex-mode").addEventListener("change", (e) => { state.mode = e.target.value; render(); });
  $("ex-target").addEventListener("change", (e) => { state.target = Number(e.target.value); render(); });
  render();
})();
"""


def _png(pixels: np.ndarray) -> str:
    """(C, H, W) floats in [0, 1] → base64 PNG (8-bit, grey or RGB)."""
    from PIL import Image

    array = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explorer_data(run_dir: Path, metrics: dict) -> dict:
    """The explorer's JSON: the stored numbers, and every image as a base64 PNG."""
    numbers = metrics["explorer"]
    tensors, _ = load_tensors(run_dir / "explorer.safetensors")
    models = [n for n in numbers["models"] if f"{n}.x_adv" in tensors]
    if "x" not in tensors or not models:
        raise AdvlabError("explorer.safetensors lacks the images")
    x = tensors["x"].float().numpy()
    data = {
        "classes": metrics["classes"],
        "eps": numbers["eps"],
        "attack": numbers["attack"],
        "labels": numbers["labels"],
        "clean": [_png(image) for image in x],
        "models": [],
    }
    for name in models:
        adv = tensors[f"{name}.x_adv"].float().numpy()
        data["models"].append(
            {
                "name": name,
                "label": model_label(metrics, name),
                "adv": [[_png(image) for image in at_eps] for at_eps in adv],
                **{k: numbers["models"][name][k] for k in ("top_classes", "top_probs", "predictions")},
            }
        )
    targeted = numbers.get("targeted")
    if targeted and "targeted.x_adv" in tensors:
        adv = tensors["targeted.x_adv"].float().numpy()
        data["targeted"] = {
            "label": model_label(metrics, targeted["model"]),
            "attack": targeted["attack"],
            "eps": targeted["eps"],
            "adv": [[_png(image) for image in row] for row in adv],
            **{k: targeted[k] for k in ("top_classes", "top_probs", "reached")},
        }
    return data


def explorer_html(run_dir: Path, metrics: dict) -> str:
    """The explorer's section body, or a note saying why there is none."""
    if not metrics.get("explorer"):
        return ""
    try:
        data = explorer_data(run_dir, metrics)
    except (AdvlabError, KeyError, ValueError, IndexError) as err:
        return f"<p class='note'>The explorer could not be drawn ({html.escape(str(err))}); rerun `advlab study`.</p>"
    # Every "<" escaped: no "</script>" or "<!--" from a class name can end or bend the script element.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    targeted = "targeted" in data
    mode = (
        (
            "<label>Attack<select id='ex-mode'><option value='untargeted'>untargeted, every model</option>"
            "<option value='targeted'>targeted: drive the image to a class</option></select></label>"
            "<label id='ex-target-wrap' hidden>Target class<select id='ex-target'></select></label>"
        )
        if targeted
        else "<select id='ex-mode' hidden><option value='untargeted'>untargeted</option></select>"
        "<span id='ex-target-wrap' hidden><select id='ex-target'></select></span>"
    )
    return (
        f"<style>{CSS}</style><section id='explorer' aria-label='adversarial example explorer'>"
        "<p>Pick a model and an image, then move ε: the attack is the study's own "
        f"({html.escape(data['attack'])}), and an image once fooled stays fooled as ε grows, as on the curve "
        "of section 1. The targeted view drives the image towards any class you choose.</p>"
        "<div class='ex-controls'><label>Model<select id='ex-model'></select></label>"
        "<label for='ex-eps'>ε</label><input type='range' id='ex-eps' min='0' step='1' "
        "aria-describedby='ex-eps-value'><output id='ex-eps-value' for='ex-eps'></output>"
        f"{mode}</div><div id='ex-images' role='group' aria-label='images'></div>"
        "<div class='ex-view'><figure><img id='ex-clean' alt=''><figcaption>clean</figcaption></figure>"
        "<figure><img id='ex-adv' alt=''><figcaption>adversarial: <span id='ex-prediction'></span>"
        "</figcaption></figure><figure><canvas id='ex-delta' width='28' height='28' role='img' "
        "aria-label='the perturbation, amplified'></canvas><figcaption id='ex-delta-scale'></figcaption>"
        "</figure><div><p id='ex-verdict' aria-live='polite'></p><ol id='ex-bars' "
        "aria-label='top-5 class probabilities'></ol></div></div>"
        f"<script type='application/json' id='explorer-data'>{payload}</script>"
        f"<script>{SCRIPT}</script></section>"
    )


__all__ = ["explorer_data", "explorer_html"]
