"""``backbeat report`` and ``backbeat serve`` driven in a real headless browser (Debian's chromium
through its chromedriver, with selenium).

One module-scoped build: the demo prefix run and swept (shrinkage 0.25, 0.5) and reported; the
plot fixture run and reported (plotter images); the run fixture with a failing sweep reported
(logs of failed blocks).  One browser session for every test.  Without chromium the browser
tests skip, except under CI (``CI`` set), where ``.ci/run`` installs it and they must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import FIXTURES, RUN_PREFIX, cli_command, cli_json, run_cli

DEMO = Path(__file__).resolve().parents[2] / "prefix"
IRIS = "user/user/iris/1/iris"
PIPELINE = "run/run/pipeline/1/base"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1300,1000")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    demo = _copy(DEMO, root / "demo")
    code, doc, err = cli_json("-p", demo, "experiments", "sweep", IRIS, "--set", "training.shrinkage=0.25,0.5",
                              "--run", "--json", "-q", timeout=120)
    assert code == 0, err
    assert run_cli("-p", demo, "experiments", "run", IRIS + "_shrinkage", "-q").returncode == 0
    code, built, err = cli_json("-p", demo, "report", "-o", root / "site-demo", "--json", timeout=120)
    assert code == 0, err
    assert len(built["experiments"]) == 4 and "compare-user.iris.1.html" in built["pages"]

    plot = _copy(FIXTURES / "plot" / "prefix", root / "plot")
    assert run_cli("-p", plot, "experiments", "run", "plotfx/plotfx/scatter/1/base", "-q").returncode == 0
    code, built, err = cli_json("-p", plot, "report", "plotfx/plotfx/scatter/1/*", "-o", root / "site-plot",
                                "--json", timeout=120)
    assert code == 0, err
    assert [p["status"] for p in built["plots"]] == ["ok"]

    run = _copy(RUN_PREFIX, root / "run")
    code, doc, err = cli_json("-p", run, "experiments", "sweep", PIPELINE, "--set", "second.mode=process",
                              "--run", "--json", "-q", timeout=120)
    assert code == 1, err
    assert run_cli("-p", run, "report", "-o", root / "site-run").returncode == 0
    return {"demo": root / "site-demo", "plot": root / "site-plot", "run": root / "site-run",
            "demo-prefix": demo, "run-prefix": run}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        reason = "needs Debian's chromium and chromium-driver and selenium (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="backbeat-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield session
    finally:
        session.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _visible_rows(browser, table: str) -> list[str]:
    return browser.execute_script(
        f"return Array.from(document.querySelectorAll('#{table} tbody tr')).filter(r => !r.hidden)"
        ".map(r => (r.cells[0].querySelector('a') || r.cells[0]).textContent.trim())")


def _wait(predicate, timeout: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("site", ["demo", "plot", "run"])
def test_every_page_loads_without_errors_links_resolve_images_show(sites, browser, site: str) -> None:
    folder = sites[site]
    pages = sorted(p.name for p in folder.glob("*.html"))
    assert "index.html" in pages and "compare.html" in pages
    for page in pages:
        html = (folder / page).read_text()
        # no network: nothing is loaded from or linked to elsewhere (the SVG namespace is a name, not a load)
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), page
        browser.get((folder / page).as_uri())
        assert browser.title.endswith("backbeat report")
        assert _errors(browser) == [], page
        links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]'))"
                                       ".map(a => a.getAttribute('href'))")
        for href in links:
            target, _, fragment = href.partition("#")
            if target:
                assert (folder / target).is_file(), f"{page}: broken link {href}"
            if fragment and not target:
                assert browser.execute_script("return !!document.getElementById(arguments[0])", fragment), href
        images = browser.execute_script("return Array.from(document.images)"
                                        ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        assert all(ok for _src, ok in images), f"{page}: images not shown: {images}"
        if page.startswith("exp-") and site == "plot" and "base" in page:
            assert len(images) == 1 and images[0][0].startswith("plots/")
        if page.startswith("exp-"):
            states = browser.execute_script("return Array.from(document.querySelectorAll('svg.graph g.node'))"
                                            ".map(g => g.getAttribute('data-state'))")
            assert states, f"{page}: no graph drawn"


def test_index_search_and_sort(sites, browser) -> None:
    browser.get((sites["demo"] / "index.html").as_uri())
    assert len(_visible_rows(browser, "experiments")) == 4
    search = browser.find_element("id", "search")
    search.send_keys("0_25")
    assert _visible_rows(browser, "experiments") == [IRIS + "_shrinkage-0_25"]
    search.clear()
    search.send_keys("no such thing")
    assert _visible_rows(browser, "experiments") == []
    assert browser.find_element("id", "no-match").is_displayed()
    search.clear()
    search.send_keys(" ")  # an input event with nothing to match: every row again
    assert len(_visible_rows(browser, "experiments")) == 4

    headers = browser.find_elements("css selector", "#experiments thead th")
    column = [h.text.strip() for h in headers].index("analysis.accuracy")

    def accuracies() -> list[float]:
        return browser.execute_script(f"return Array.from(document.querySelectorAll('#experiments tbody tr'))"
                                      f".map(r => parseFloat(r.cells[{column}].textContent))")

    headers[column].click()
    assert accuracies() == sorted(accuracies()) and len(set(accuracies())) > 1
    headers[column].click()
    assert accuracies() == sorted(accuracies(), reverse=True)
    assert _visible_rows(browser, "experiments")[0] == IRIS + "_shrinkage-0_25"  # best accuracy first
    headers[0].click()
    assert _visible_rows(browser, "experiments") == sorted(_visible_rows(browser, "experiments"))
    assert _errors(browser) == []


def test_experiment_page_content(sites) -> None:
    page = (sites["demo"] / "exp-user.user.iris.1.iris_shrinkage-0_25.html").read_text()
    for text in ("training.shrinkage=0.25", "0.973333", "Audit of the last run", "user/lda_trainer/1",
                 'data-state="cached"', "Results digest"):
        assert text in page, text
    compare = (sites["demo"] / "compare.html").read_text()
    assert "training.shrinkage" in compare and compare.count('class="chart"') == 2  # accuracy, errors
    failed = (sites["run"] / "exp-run.run.pipeline.1.base_mode-process.html").read_text()
    assert "Block <code>second</code> failed" in failed
    assert "ValueError: faulty: process failed on purpose at item 3" in failed  # the user's traceback


def test_report_refuses_a_folder_it_did_not_write(sites, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    proc = run_cli("-p", sites["demo-prefix"], "report", "-o", tmp_path)
    assert proc.returncode == 2 and "is not empty and holds no earlier report" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_is_read_only_and_shows_a_run_in_progress(sites, browser) -> None:
    pfx = sites["run-prefix"]
    code, doc, err = cli_json("-p", pfx, "experiments", "sweep", PIPELINE, "--set", "first.delay=0.5",
                              "--name", "slow", "--json")
    assert code == 0, err
    slow = "run/run/pipeline/1/slow"
    server = subprocess.Popen(cli_command("-p", pfx, "serve", "--port", "0"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    run = None
    try:
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert urlsplit(url).hostname == "127.0.0.1"
        status, body = _get(url)
        assert status == 200 and b"run/run/pipeline/1/base_mode-process" in body
        assert _get(url + "index.html", "POST")[0] == 405
        assert _get(url + "static/../../../etc/passwd")[0] == 404
        assert _get(url + "exp-no.such.html")[0] == 404

        page = url + "exp-run.run.pipeline.1.slow.html"
        browser.get(page)
        assert browser.execute_script("return document.body.dataset.lastRun") == ""
        run = subprocess.Popen(cli_command("-p", pfx, "experiments", "run", slow, "-q"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        progress = url + "api/progress/run.run.pipeline.1.slow.json"
        doc = _wait(lambda: (lambda d: d if d["running"] else None)(json.loads(_get(progress)[1])),
                    what="the run to show in api/progress")
        assert doc["progress"]["experiment"] == slow and doc["progress"]["pid"] == run.pid
        # the page polls: the progress box appears and the running block is recoloured
        _wait(lambda: browser.execute_script("return !document.getElementById('progress').hidden"),
              what="the progress box")
        _wait(lambda: browser.execute_script(
            "return document.querySelector('g.node[data-node=\"first\"]').getAttribute('data-state') === 'running'"),
            what="block `first' drawn as running")
        assert run.wait(timeout=60) == 0, run.stderr.read()
        # the run ended: the page reloads by itself and shows the recorded run
        _wait(lambda: browser.execute_script("return document.body.dataset.lastRun") not in ("", None),
              what="the page to reload with the run's record")
        assert browser.find_element("css selector", "#results table.result-table").is_displayed()
        assert _errors(browser) == []
        assert json.loads(_get(progress)[1])["running"] is False
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        server.terminate()
        server.wait(timeout=10)
