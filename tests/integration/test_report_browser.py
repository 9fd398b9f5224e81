"""The report as a person sees it: rendered by a real headless Chromium (Debian's chromium and
chromium-driver, `make browser`), every figure must load and the console must stay clean.

A full-page screenshot is kept under the test's tmp dir (its path is printed) for a look by eye.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cluster.config.schema import ReportConfig, SloConfig
from cluster.report.build import build
from tests.report_fixture import build_run

pytestmark = pytest.mark.integration

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium as root allows it (no sandbox, no network side traffic, a fresh profile)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and shutil.which("chromedriver")):
        pytest.skip("chromium / chromium-driver not installed (make browser)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or DRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    yield driver
    driver.quit()


def full_page_png(driver) -> bytes:
    """The whole page (not just the window) as PNG, through the DevTools protocol."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": int(size["height"]), "deviceScaleFactor": 1, "mobile": False},
    )
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    return base64.b64decode(shot["data"])


def test_report_renders_every_figure_without_console_errors(tmp_path, browser):
    root = build_run(tmp_path / "run")
    cfg = ReportConfig(slos=[SloConfig(name="interactive", ttft_ms=300.0, tpot_ms=20.0)])
    rep = build(root, root / "report", cfg)
    browser.get(rep.html.resolve().as_uri())
    images = browser.find_elements("tag name", "img")
    assert len(images) == rep.figures >= 6
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"
    )
    assert all(done and width > 0 for done, width, _ in widths), widths
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    text = browser.find_element("tag name", "body").text
    assert "Guideline: what to deploy" in text and "W8A8-INT" in text
    assert "not measured: FP8 has no fast kernel on cpu-local" in browser.page_source
    shot = tmp_path / "report.png"
    shot.write_bytes(full_page_png(browser))
    assert shot.stat().st_size > 10_000
    print(f"\nreport screenshot: {shot}\nreport page: {rep.html}")
