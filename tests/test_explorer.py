"""The report's explorer (issue 17): the study's numbers behind it, and the page driven in a real browser
(Selenium and Debian's chromium-driver, never a browser downloaded at run time), every network request
blocked: what it shows is what metrics.json stores, at every ε, for every model, and in the targeted view."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from advlab.runs import load_checkpoint
from advlab.study.explorer import explorer_images
from advlab.tensor_files import load_tensors

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)


def test_explorer_images_cover_the_classes():
    labels = torch.tensor([3, 3, 1, 0, 1, 2, 0, 3, 2, 1])
    chosen = explorer_images(labels, 4, 6)
    assert [int(labels[i]) for i in chosen[:4]] == [0, 1, 2, 3]  # one of each class first
    assert chosen[:4] == [3, 2, 5, 0] and chosen[4:] == [6, 4]  # then the second of each, in class order
    assert len(explorer_images(labels, 4, 50)) == 10


def test_the_explorer_stores_what_its_models_do_on_its_images(tiny_study):
    out, metrics = tiny_study
    explorer = metrics["explorer"]
    tensors, _ = load_tensors(out / "explorer.safetensors")
    x, labels = tensors["x"], tensors["labels"]
    assert len(labels) == 12 and set(labels.tolist()) == set(range(10))
    assert explorer["eps"] == metrics["eps_grid"] and explorer["labels"] == labels.tolist()
    for name in metrics["models"]:
        model, _ = load_checkpoint(out / "models" / name / "model.safetensors")
        stored = explorer["models"][name]
        adv = tensors[f"{name}.x_adv"]
        fooled = torch.zeros(len(labels), dtype=torch.bool)
        for i, eps in enumerate(explorer["eps"]):
            assert (adv[i] - x).abs().max() <= eps + 1e-6  # in its ε-ball
            with torch.no_grad():
                probs = model(adv[i]).softmax(1)
            top = probs.topk(5, dim=1)
            assert stored["top_classes"][i] == top.indices.tolist()
            assert torch.allclose(torch.tensor(stored["top_probs"][i]), top.values, atol=2e-6)
            now = torch.tensor(stored["predictions"][i]) != labels
            assert not (fooled & ~now).any(), f"{name}: an image fooled at a smaller ε is shown unfooled at {eps}"
            fooled |= now
        assert torch.equal(adv[0], x)  # ε = 0: the clean images
        assert fooled.any() or name != "standard"  # ε = 0.5 fools the standard model
    targeted = explorer["targeted"]
    reached = torch.tensor(targeted["reached"])
    other = torch.ones(12, 10, dtype=torch.bool)
    other[torch.arange(12), labels] = False
    assert reached.shape == (12, 10) and (reached & other).sum() >= 12  # images driven to other classes
    own = torch.tensor(targeted["top_classes"])[torch.arange(12), labels, 0]
    standard = explorer["models"]["standard"]["predictions"][0]
    assert own.tolist() == standard  # towards its own class: the clean image, as the standard model sees it
    tops = torch.tensor(targeted["top_classes"])[:, :, 0]
    assert torch.equal(tops == torch.arange(10), reached)


# ------------------------------------------------------------------------------------------ the browser

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh --test)",
)


@pytest.fixture
def browser(tmp_path):
    pytest.importorskip("selenium", reason="selenium is a test dependency (pip install -e '.[test]')")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={tmp_path}/p",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*"]})
        yield driver
    finally:
        driver.quit()


def _shown(driver) -> dict:
    from selenium.webdriver.common.by import By

    bars = driver.find_elements(By.CSS_SELECTOR, "#ex-bars li")
    return {
        "prediction": driver.find_element(By.ID, "ex-prediction").text,
        "eps": driver.find_element(By.ID, "ex-eps-value").text,
        "bars": [
            (
                b.get_attribute("data-class"),
                float(b.get_attribute("data-p")),
                b.find_element(By.CLASS_NAME, "value").text,
                "true" in b.get_attribute("class").split(),
            )
            for b in bars
        ],
    }


def _expected(metrics: dict, top_classes: list, top_probs: list, label: int) -> list:
    classes = metrics["classes"]
    return [(classes[c], p, f"{100 * p:.1f}%", c == label) for c, p in zip(top_classes, top_probs)]


@needs_browser
def test_the_explorer_in_chromium_shows_the_stored_numbers(tiny_study, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    out, _ = tiny_study
    metrics = json.loads((out / "metrics.json").read_text())
    explorer = metrics["explorer"]
    names = list(explorer["models"])
    browser.set_window_size(1100, 1000)
    browser.get((out / "report.html").as_uri())
    section = browser.find_element(By.ID, "explorer")
    browser.execute_script("arguments[0].scrollIntoView()", section)
    flips = 0
    for image in (1, 7):
        browser.find_elements(By.CSS_SELECTOR, "#ex-images button")[image].click()
        label = explorer["labels"][image]
        for m, name in enumerate(names):
            Select(browser.find_element(By.ID, "ex-model")).select_by_index(m)
            slider = browser.find_element(By.ID, "ex-eps")
            slider.send_keys(Keys.HOME)  # the keyboard moves the slider
            previous = None
            for i, eps in enumerate(explorer["eps"]):
                if i:
                    slider.send_keys(Keys.ARROW_RIGHT)
                stored = explorer["models"][name]
                shown = _shown(browser)
                assert shown["eps"] == f"ε = {eps:g}"
                assert shown["bars"] == _expected(
                    metrics, stored["top_classes"][i][image], stored["top_probs"][i][image], label
                ), (name, image, eps)
                predicted = metrics["classes"][stored["predictions"][i][image]]
                assert shown["prediction"] == predicted
                flips += previous is not None and predicted != previous
                previous = predicted
    assert flips, "no prediction flipped as ε grew: the test would not see a wrong image"
    # The perturbation is drawn: at ε > 0 on the standard model the canvas is not flat grey.
    Select(browser.find_element(By.ID, "ex-model")).select_by_index(names.index("standard"))
    browser.find_element(By.ID, "ex-eps").send_keys(Keys.END)
    spread = browser.execute_script(
        "const c = document.getElementById('ex-delta'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let lo = 255, hi = 0;"
        "for (let k = 0; k < d.length; k += 4) { lo = Math.min(lo, d[k]); hi = Math.max(hi, d[k]); } return hi - lo;"
    )
    assert spread > 50
    # The targeted view: any image driven towards any class.
    Select(browser.find_element(By.ID, "ex-mode")).select_by_value("targeted")
    targeted = explorer["targeted"]
    for target in (0, 5):
        Select(browser.find_element(By.ID, "ex-target")).select_by_index(target)
        shown = _shown(browser)
        assert shown["bars"] == _expected(
            metrics, targeted["top_classes"][7][target], targeted["top_probs"][7][target], explorer["labels"][7]
        )
    browser.save_screenshot(str(tmp_path / "explorer.png"))  # what docs/explorer_screenshot.py commits
    assert (tmp_path / "explorer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    Select(browser.find_element(By.ID, "ex-mode")).select_by_value("untargeted")
    # Readable at phone width: no part of the explorer wider than the screen (the results tables scroll).
    browser.set_window_size(390, 844)
    overflow = browser.execute_script(
        "const w = window.innerWidth; return [...document.querySelectorAll('#explorer *')]"
        ".filter((e) => e.getBoundingClientRect().right > w + 1).map((e) => e.tagName + '#' + e.id);"
    )
    assert not overflow, overflow
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    fetched = [r["params"]["request"]["url"] for r in requests if r["method"] == "Network.requestWillBeSent"]
    assert fetched and not [u for u in fetched if u.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))], fetched


@needs_browser
def test_the_browser_check_catches_a_page_that_shows_other_numbers(tiny_study, browser, tmp_path):
    """The comparison above can fail: a page whose embedded data were altered shows other numbers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, _ = tiny_study
    metrics = json.loads((out / "metrics.json").read_text())
    first = metrics["explorer"]["models"]["standard"]  # the first model of the page's data
    page = (out / "report.html").read_text(encoding="utf-8")
    stored = f'"top_probs":[[[{json.dumps(first["top_probs"][0][0][0])}'
    assert stored in page
    (tmp_path / "altered.html").write_text(page.replace(stored, '"top_probs":[[[0.123456', 1), encoding="utf-8")
    browser.get((tmp_path / "altered.html").as_uri())
    browser.find_elements(By.CSS_SELECTOR, "#ex-images button")[0].click()
    browser.find_element(By.ID, "ex-eps").send_keys(Keys.HOME)
    label = metrics["explorer"]["labels"][0]
    assert _shown(browser)["bars"] != _expected(metrics, first["top_classes"][0][0], first["top_probs"][0][0], label)
    assert _shown(browser)["bars"][0][1:3] == (0.123456, "12.3%")
