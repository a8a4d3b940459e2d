"""The study report: built from a fabricated run folder (see report_fixture.py), checked as text and in Chromium."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from report_fixture import make_fake_run

from advlab.errors import AdvlabError
from advlab.files import write_json
from advlab.report import build_report, save_gallery, story
from advlab.results import pareto_frontier, percent, points

FIGURES = ("robust_vs_eps", "tradeoff", "training_curves", "gallery", "gallery_targeted", "arms_race")
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(run folder, metrics, report.html text) of one fabricated run, built once for the module."""
    run = tmp_path_factory.mktemp("study")
    metrics = make_fake_run(run)
    path = build_report(run)
    return run, metrics, path.read_text(encoding="utf-8")


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, entities decoded (a rowspan cell only in its first row)."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" | ")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _table(text: str, first_header: str, header: str) -> list[list[str]]:
    """The rows of the table whose header row starts with ``first_header`` and names ``header``."""
    return next(t for t in _Tables(text).tables if t[0][0] == first_header and header in t[0])


def _accuracy(cell: str) -> float:
    """A percentage cell parsed back into a fraction (and checked to have the report's one format)."""
    assert re.fullmatch(r"\d{1,3}\.\d%", cell), cell
    return float(cell[:-1]) / 100


def _numbers(obj) -> list[float]:
    """Every number anywhere in a JSON value."""
    if isinstance(obj, dict):
        return [v for value in obj.values() for v in _numbers(value)]
    if isinstance(obj, list):
        return [v for value in obj for v in _numbers(value)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_build_report_writes_every_figure_and_the_html(built):
    run, _, text = built
    assert (run / "report.html").is_file() and text.startswith("<!DOCTYPE html>")
    for name in FIGURES:
        assert (run / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_self_contained(built):
    run, _, text = built
    embedded = [base64.b64decode(data) for data in DATA_URI.findall(text)]
    assert sorted(embedded) == sorted((run / "figures" / f"{name}.png").read_bytes() for name in FIGURES)
    # The only scripts are the explorer's: its data as JSON and its inline code, nothing loaded from anywhere.
    assert re.findall(r"<script[^>]*>", text) == ["<script type='application/json' id='explorer-data'>", "<script>"]
    assert "http://" not in text and "https://" not in text
    assert 'src="file' not in text and "<link" not in text and "url(" not in text


def test_headline_story_is_made_of_the_numbers(built):
    _, metrics, text = built
    headline = re.search(r"<p class='meta'>(.*?)</p>", text).group(1)
    assert "1,000 test images" in headline and "L∞ ε = 0.1" in headline and "fashion-mnist" in text
    paragraph = re.search(r"<div class='story'><p>(.*?)</p></div>", text).group(1)
    assert "90.8% accurate on clean images but 1.2% under PGD-20 L∞ at ε = 0.1" in paragraph
    assert "PGD-10 AT, the most robust model, keeps 71.0% under PGD-20 L∞ at a cost of 4.1 points" in paragraph
    assert "its worst case over all attacks is 70.5%" in paragraph  # the sanity checks' attacks count too
    assert "PGD-10 AT beats TRADES β=6 on both counts" in paragraph
    assert "1 of 10 sanity checks against gradient masking fails" in paragraph


def test_results_tables_parse_back_to_metrics(built):
    _, metrics, text = built
    grid = metrics["eps_grid"]
    rows = _table(text, "model", "attack")
    assert rows[0][3:] == [f"ε = {e:g}" for e in grid]
    body = iter(rows[1:])
    for model in metrics["models"].values():
        series = [*model["robust_accuracy"].items(), ("worst case", model["worst_case_accuracy"])]
        for k, (attack, values) in enumerate(series):
            row = next(body)
            if k == 0:
                assert row[0] == f"{model['label']} | {model['method']}"
                assert _accuracy(row[1]) == pytest.approx(model["clean_accuracy"], abs=5.01e-4)
                assert row[1] == percent(model["clean_accuracy"])
                row = row[2:]
            assert row[0] == attack
            assert [_accuracy(c) for c in row[1:]] == pytest.approx(values, abs=5.01e-4)
            assert row[1:] == [percent(v) for v in values]
    assert next(body, None) is None

    i = grid.index(metrics["train_eps"])
    scores = {
        n: (m["clean_accuracy"], (m.get("worst_case_all_attacks") or {}).get("accuracy", m["worst_case_accuracy"][i]))
        for n, m in metrics["models"].items()
    }
    assert scores["pgd"][1] < metrics["models"]["pgd"]["worst_case_accuracy"][i]  # the fixture has both kinds
    summary = _table(text, "model", "on the frontier")[1:]
    for row, (name, model) in zip(summary, metrics["models"].items(), strict=True):
        assert row[0] == model["label"]
        assert (_accuracy(row[2]), _accuracy(row[3])) == pytest.approx(scores[name], abs=5.01e-4)
        assert row[4] == percent(model["certified"]["verified_accuracy"])  # the certified stage's column
        assert row[5] == ("yes" if name in pareto_frontier(scores) else "no")


def test_every_percentage_in_the_report_comes_from_metrics(built):
    """Nothing made up, nothing rounded another way: each "x.y%" shown is percent() of a number in the file."""
    _, metrics, text = built
    allowed = {percent(v) for v in _numbers(metrics)}
    shown = set(re.findall(r"\d+\.\d+%", DATA_URI.sub("", text)))
    assert shown and shown <= allowed, shown - allowed


def test_report_lists_every_attack_hyperparameter(built):
    _, metrics, text = built
    rows = _table(text, "attack", "α (step size)")
    assert rows[0] == [
        "attack",
        "kind",
        "norm",
        "steps",
        "restarts",
        "random start",
        "loss",
        "targeted",
        "α / ε",
        "ε",
        "α (step size)",
    ]
    body = iter(rows[1:])
    for label, settings in metrics["attack_hyperparameters"].items():
        for k, h in enumerate(settings):
            row = next(body)
            if k == 0:
                assert row[:6] == [
                    label,
                    h["attack"],
                    h["norm"],
                    str(h["steps"]),
                    str(h["restarts"]),
                    "yes" if h["random_start"] else "no",
                ]
            assert float(row[-2]) == pytest.approx(h["eps"]) and float(row[-1]) == pytest.approx(h["alpha"], rel=1e-3)
    for label, h in metrics["check_attacks"].items():  # the sanity checks' attacks, at the training ε only
        row = next(body)
        assert row[:6] == [
            label,
            h["attack"],
            h["norm"],
            str(h["steps"]),
            str(h["restarts"]),
            "yes" if h["random_start"] else "no",
        ]
        assert float(row[-2]) == pytest.approx(h["eps"])
        assert row[-1] == "—" if h["alpha"] is None else float(row[-1]) == pytest.approx(h["alpha"], rel=1e-3)
    assert next(body, None) is None


def test_report_shows_sanity_badges(built):
    _, metrics, text = built
    passed = sum(c["passed"] for c in metrics["sanity_checks"])
    assert text.count('<span class="badge pass">PASS</span>') == passed == 9
    assert text.count('<span class="badge fail">FAIL</span>') == 1
    assert "(&lt; 1 needed)" in text  # details are HTML-escaped
    rows = _table(text, "model", "result")[1:]
    assert [r[2] for r in rows] == ["PASS" if c["passed"] else "FAIL" for c in metrics["sanity_checks"]]
    assert all(percent(v) in r[3] for r, c in zip(rows, metrics["sanity_checks"]) for v in c["numbers"].values())


def test_strings_from_files_are_escaped(tmp_path):
    metrics = make_fake_run(tmp_path, n_images=2)
    metrics["models"]["pgd"]["label"] = "<script>alert('x')</script> TRADES $\\beta$"  # $ would start mathtext
    metrics["sanity_checks"][0]["detail"] = "<b>bold</b> & more"
    metrics["classes"][0] = "<script>alert(1)</script>"  # a class name from a user's data set (drawn in PNGs only)
    write_json(tmp_path / "metrics.json", metrics)
    text = build_report(tmp_path).read_text(encoding="utf-8")
    # No markup from a file: the only script tags are the explorer's own, and its JSON escapes every "<".
    assert re.findall(r"<script[^>]*>", text) == ["<script type='application/json' id='explorer-data'>", "<script>"]
    assert "<b>bold" not in text and "\\u003cscript>alert(1)\\u003c/script>" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; TRADES $\\beta$" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text


def test_report_without_gallery_or_optional_records(tmp_path):
    metrics = make_fake_run(tmp_path, gallery=False)
    for model in metrics["models"].values():
        model.update(epochs=[], train_seconds=None)
        del model["train_config"]
    metrics.update(sanity_checks=[], best_robust_model=None)
    for key in ("attacks", "created", "advlab_version", "arms_race"):
        del metrics[key]
    write_json(tmp_path / "metrics.json", metrics)
    text = build_report(tmp_path).read_text(encoding="utf-8")
    assert len(DATA_URI.findall(text)) == 3
    assert "gallery.safetensors is missing" in text and "no sanity-check results" in text
    assert not (tmp_path / "figures" / "gallery.png").exists()


def test_report_tolerates_missing_and_null_numbers(tmp_path):
    metrics = make_fake_run(tmp_path, gallery=False)
    del metrics["best_robust_model"], metrics["chance_accuracy"], metrics["n_eval"]
    metrics["models"]["fgsm"]["robust_accuracy"]["PGD-20 L∞"][3] = None  # an ε that was not evaluated
    metrics["models"]["trades-b1"]["clean_accuracy"] = None
    del metrics["models"]["trades-b6"]["robust_accuracy"], metrics["models"]["trades-b6"]["worst_case_accuracy"]
    metrics["models"]["pgd"]["epochs"] = [{"epoch": 1}, {"epoch": 2, "val_clean_acc": 0.8, "val_robust_acc": None}]
    write_json(tmp_path / "metrics.json", metrics)
    text = build_report(tmp_path).read_text(encoding="utf-8")
    assert "PGD-10 AT, the most robust model" in text  # best_robust_model recomputed from the worst case
    assert "chance" not in re.search(r"<div class='story'>(.*?)</div>", text).group(1)
    assert "<td>—</td>" in text and "? test images" in text


@pytest.mark.parametrize(
    "corrupt, where",
    [
        (lambda m: m["models"]["pgd"]["robust_accuracy"]["FGSM L∞"].pop(), "models.pgd.robust_accuracy['FGSM L∞']"),
        (lambda m: m["models"]["pgd"].update(clean_accuracy="high"), "models.pgd.clean_accuracy"),
        (lambda m: m["models"]["standard"].update(worst_case_accuracy=[None, "0.1"]), "models.standard.worst_case"),
        (lambda m: m.update(eps_grid=[]), "eps_grid"),
        (lambda m: m.update(models=["standard"]), "models"),
        (lambda m: m.update(sanity_checks="all good"), "sanity_checks"),
        (lambda m: m.update(attack_hyperparameters={"FGSM": 0.1}), "attack_hyperparameters"),
        (lambda m: m.update(attacks={"FGSM L∞": "fgsm"}), "attacks"),
    ],
)
def test_malformed_metrics_raise_a_one_line_advlab_error(tmp_path, corrupt, where):
    metrics = make_fake_run(tmp_path, gallery=False)
    corrupt(metrics)
    write_json(tmp_path / "metrics.json", metrics)
    with pytest.raises(AdvlabError, match="is not a study's metrics file") as err:
        build_report(tmp_path)
    assert where in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "report.html").exists()


def test_story_follows_the_numbers(tmp_path):
    metrics = make_fake_run(tmp_path, gallery=False)
    for check in metrics["sanity_checks"]:
        check["passed"], check["status"] = True, "pass"
    assert "All 10 applicable sanity checks against gradient masking pass." in story(metrics)
    idle = copy.deepcopy(metrics)
    idle["sanity_checks"][0].update(passed=None, status="not applicable")  # never counted as a pass
    assert "All 9 applicable sanity checks against gradient masking pass (1 not applicable" in story(idle)
    assert "collapsed" not in story(metrics)
    collapsed = copy.deepcopy(metrics)
    collapsed["models"]["fgsm"]["collapse"] = "catastrophic overfitting at epoch 3, step 120: FGSM 90% but PGD-10 2%"
    assert "training of fast FGSM AT collapsed: catastrophic overfitting at epoch 3" in story(collapsed)
    changed = copy.deepcopy(metrics)
    changed["models"]["pgd"]["clean_accuracy"] = 0.9200
    changed["models"]["standard"]["worst_case_accuracy"][-1] = 0.25
    text = story(changed)
    assert "keeps 71.0% under PGD-20 L∞ and is even 1.2 points more accurate on clean images (92.0%)" in text
    assert "the best worst-case accuracy is 25.0%, still above chance (10.0%)" in text
    assert "PGD-10 AT is on the Pareto frontier" in text


def test_corrupt_gallery_is_reported_not_fatal(tmp_path):
    make_fake_run(tmp_path, gallery=False)
    (tmp_path / "gallery.safetensors").write_bytes(b"not a safetensors file")
    assert "could not be read" in build_report(tmp_path).read_text(encoding="utf-8")


def test_missing_or_corrupt_metrics_raise_advlab_error(tmp_path):
    with pytest.raises(AdvlabError, match="metrics.json does not exist"):
        build_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(AdvlabError, match="not a readable JSON file"):
        build_report(tmp_path)
    write_json(tmp_path / "metrics.json", {"models": {}})
    with pytest.raises(AdvlabError, match="not a study's metrics file"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_percent_and_points_round_once():
    assert percent(0.90834) == "90.8%" and percent(0.0) == "0.0%" and percent(None) == "—"
    assert points(0.9083, 0.8674) == "4.1"  # 90.8 − 86.7, as a reader would subtract the shown numbers
    assert points(0.90849, 0.86751) == "4.0"  # 90.8 − 86.8, though the unrounded difference is 4.1


def test_pareto_frontier():
    scores = {"a": (0.9, 0.0), "b": (0.8, 0.7), "c": (0.79, 0.6), "d": (0.85, 0.5)}
    assert pareto_frontier(scores) == ["b", "d", "a"]


def test_save_gallery_still_writes_a_png(tmp_path):
    x = torch.rand(2, 1, 28, 28)
    path = save_gallery(
        tmp_path / "g.png",
        x,
        (x + 0.1).clamp(0, 1),
        torch.tensor([0, 1]),
        torch.randn(2, 10),
        torch.randn(2, 10),
        classes=[str(i) for i in range(10)],
        eps=0.1,
        title="t",
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------- real browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on PATH (apt-get install chromium); the report's browser check needs a real headless browser",
)


class _DevTools:
    """Chromium driven over the DevTools protocol on a pipe: JSON messages ending in NUL, fd 3 in, fd 4 out."""

    def __init__(self, user_data_dir: Path, timeout: float = 30.0):
        self.timeout, self.events, self._buffer, self._next_id = timeout, [], b"", 0
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends at the fds Chromium expects
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire_fds,
            start_new_session=True,
        )  # own group: killed as one in close()
        os.close(to_browser)
        os.close(from_browser)

    def close(self) -> None:
        for fd in (self._write, self._read):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the browser and its helpers, all started here
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit status {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        """The first ``method`` event, seen already (it may come before a call's reply) or still to come."""
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            self.events.append(self._message(deadline))


def load_in_chromium(page: Path, tmp_path: Path) -> tuple[list[int], list[str], list[str]]:
    """Open ``page`` in headless Chromium: (decoded width of each <img> outside the explorer, which
    tests/test_explorer.py drives, console errors, URLs fetched)."""
    browser = _DevTools(tmp_path / "chromium-profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        widths = browser.call(
            "Runtime.evaluate",
            {
                "expression": "Promise.all(Array.from(document.images).filter(i => !i.closest('#explorer')).map("
                "i => i.decode().then(() => i.complete ? i.naturalWidth : 0, () => 0)))",
                "awaitPromise": True,
                "returnByValue": True,
            },
            session=session,
        )["result"]["value"]
        errors, fetched = [], []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                fetched.append(params["request"]["url"])
        return widths, errors, fetched
    finally:
        browser.close()


@needs_chromium
def test_report_renders_in_chromium(built, tmp_path):
    run, _, _ = built
    widths, errors, fetched = load_in_chromium(run / "report.html", tmp_path)
    assert errors == []
    assert len(widths) == len(FIGURES) and all(w > 0 for w in widths), widths
    assert all(url.startswith(("file:", "data:")) for url in fetched), fetched  # opens offline


@needs_chromium
def test_chromium_check_catches_broken_pages(tmp_path):
    """The harness itself: a console error, a thrown exception and an image that fails to load are all seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><img src='missing.png'><img src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom'); throw new Error('bang')</script>",
        encoding="utf-8",
    )
    widths, errors, _ = load_in_chromium(page, tmp_path)
    assert widths == [0, 0]
    assert any("boom" in e for e in errors) and any("bang" in e or "Uncaught" in e for e in errors)


def test_story_repeats_the_model_warnings(tmp_path):
    metrics = make_fake_run(tmp_path, gallery=False)
    assert "model warnings" not in story(metrics)
    metrics["models"]["fgsm"]["model_flags"] = [
        {
            "flag": "zero-gradients",
            "numbers": {"images": 7, "of": 400},
            "message": "the input gradient is zero on 7 of 400 images",
        }
    ]
    assert "The model warnings concern fast FGSM AT: the input gradient is zero on 7 of 400 images." in story(metrics)


def test_the_arms_race_section_shows_the_collapse_and_what_resists(tmp_path):
    metrics = make_fake_run(tmp_path, gallery=False)
    text = build_report(tmp_path).read_text(encoding="utf-8")
    assert (tmp_path / "figures" / "arms_race.png").is_file()
    section = text[text.index("7. The arms race") :]
    # JPEG looked 88.7% robust to the naive attack; BPDA brings it to 5.7%, 3.3 points from the undefended 2.4%.
    assert (
        "no real gain: the adaptive attack brings it to 5.7%, 3.3 points from the undefended model at 2.4%; "
        "the naive evaluation overstated it by 83.0 points" in section
    )
    assert "unreliable: the checks find zero or non-finite gradients through the defense" in section
    # 1-bit binarization really resists at ε = 0.1: said so, with the reason, not forced.
    assert (
        "resists the adaptive attack: 47.3 points above the undefended model. Why: only 3.1% of the "
        "pixels of these images lie within ε = 0.1 of a rounding threshold" in section
    )
    assert "the price is 9.4 points of clean accuracy" in section
    # The trained model: the wrapper adds only noise to its adaptive robust accuracy.
    assert "PGD-10 AT's adaptive robust accuracy differs from its undefended self's by +0.7 to +0.7 points" in section
    assert (
        "Behind jpeg quality=75, the standard model looks 88.7% robust to a naive attack, but an adaptive one "
        "(PGD-20 L∞ BPDA) brings it to 5.7%" in story(metrics)
    )
    # Strings from the file are escaped here too.
    metrics["arms_race"]["rows"][1]["adaptive_attack"] = "<script>alert(1)</script>"
    write_json(tmp_path / "metrics.json", metrics)
    assert "<script>alert(1)" not in build_report(tmp_path).read_text(encoding="utf-8")
    del metrics["arms_race"]  # a study without defenses has no such section
    write_json(tmp_path / "metrics.json", metrics)
    assert "7. The arms race" not in build_report(tmp_path).read_text(encoding="utf-8")
