"""Screenshot the explorer of a study's report.html in headless Chromium (Selenium, Debian's chromedriver).

    .venv/bin/python docs/explorer_screenshot.py runs/quick docs/explorer.png [--model standard] [--image 7]

Shows MODEL on image IMAGE (of the explorer's, counted from 0) at the study's training ε. Needs
`scripts/setup.sh --test` (chromium, chromium-driver, selenium); the page is self-contained, so no network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="standard")
    p.add_argument("--image", type=int, default=7)
    args = p.parse_args()
    report, metrics_path = args.run_dir / "report.html", args.run_dir / "metrics.json"
    if not report.is_file() or not metrics_path.is_file():
        print(f"{args.run_dir} has no report.html and metrics.json; run `advlab study` first", file=sys.stderr)
        return 2
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    explorer = metrics.get("explorer")
    if not explorer or args.model not in explorer["models"]:
        print(f"no explorer data for model {args.model!r} in {metrics_path}", file=sys.stderr)
        return 2
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    with tempfile.TemporaryDirectory() as profile:
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.set_window_size(1100, 1000)
            driver.get(report.resolve().as_uri())
            Select(driver.find_element(By.ID, "ex-model")).select_by_index(list(explorer["models"]).index(args.model))
            driver.find_elements(By.CSS_SELECTOR, "#ex-images button")[args.image].click()
            slider = driver.find_element(By.ID, "ex-eps")
            slider.send_keys(Keys.HOME)
            for _ in range(explorer["eps"].index(metrics["train_eps"])):
                slider.send_keys(Keys.ARROW_RIGHT)
            section = driver.find_element(By.ID, "explorer")
            driver.execute_script("arguments[0].scrollIntoView()", section)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            section.screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
