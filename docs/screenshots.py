"""Screenshots of the report for the docs: ``docs/img/report-index.png`` and ``report-experiment.png``.

Builds the report of a copy of the demo prefix (both experiments run, plus a sweep of the
shrinkage) in a temporary folder and photographs two pages in headless chromium (Debian's
``chromium`` and ``chromium-driver``, driven by selenium from the test extra)::

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def backbeat(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "backbeat", *args], check=True, stdout=subprocess.DEVNULL)


def build(work: Path) -> Path:
    prefix = work / "prefix"
    shutil.copytree(ROOT / "prefix", prefix, ignore=shutil.ignore_patterns("cache"))
    backbeat("-p", str(prefix), "experiments", "sweep", "user/user/iris/1/iris",
             "--set", "training.shrinkage=0.25,0.5", "--run", "-q")
    backbeat("-p", str(prefix), "experiments", "run", "user/user/iris/1/*", "-q")
    backbeat("-p", str(prefix), "report", "-o", str(work / "site"))
    return work / "site"


def shoot(site: Path, work: Path) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for flag in (*FLAGS, f"--user-data-dir={work / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    written = []
    try:
        for page, name, height in (("index.html", "report-index.png", 760),
                                   ("exp-user.user.iris.1.iris_shrinkage-0_25.html", "report-experiment.png", 1500)):
            driver.set_window_size(1280, height)
            driver.get((site / page).as_uri())
            OUT.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(OUT / name))
            written.append(OUT / name)
    finally:
        driver.quit()
    return written


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="backbeat-screenshots-") as tmp:
        work = Path(tmp)
        for path in shoot(build(work), work):
            print(path)


if __name__ == "__main__":
    main()
