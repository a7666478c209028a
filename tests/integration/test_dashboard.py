"""The dashboard in a real browser, on a real POC federation.

A POC federation (server1, site-1, site-2: real daemons, real certificates),
``shoal dashboard``'s app for its admin, and headless Chromium driven by
Selenium (Debian's ``chromium`` and ``chromium-driver``; .ci/run installs
them). The test submits hello-numpy (with a cross-site evaluation) from the
jobs page, waits for the job page to draw its rounds and read
FINISHED:COMPLETED with no reload, downloads its results, uploads it again as
an archive and deletes that copy, and checks accessibility basics on each
page: every form control labelled, every control reachable with Tab, and the
contrast of text and badges (WCAG AA, 4.5:1) computed from the page's own
colours.

Screenshots go to ``tmp_path``; to refresh the ones in docs/images::

    SHOAL_DOCS_SCREENSHOTS=1 make pytest PYTEST_ARGS=tests/integration/test_dashboard.py
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from shoal import __version__  # noqa: E402
from shoal.jobs import pack_job  # noqa: E402
from shoal.web import DashboardConfig, RunningDashboard, start_dashboard  # noqa: E402

from .conftest import Federation  # noqa: E402
from .test_cross_site_eval import _with_workflow  # noqa: E402
from .test_jobs import JOB_TIMEOUT, numpy_job  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
#: Set to 1 to write the screenshots into docs/images (see the module docstring).
SCREENSHOTS_ENV = "SHOAL_DOCS_SCREENSHOTS"
ROUNDS = 5
#: WCAG AA for body text.
MIN_CONTRAST = 4.5


def _browser_paths() -> tuple[str, str]:
    chromium = os.environ.get("SHOAL_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("SHOAL_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs chromium and chromedriver (Debian: chromium chromium-driver)")
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(federation: Federation) -> Iterator[RunningDashboard]:
    layout = federation.layout
    job = _with_workflow(
        numpy_job(layout.admin_kit / "transfer", name="hello-numpy", rounds=ROUNDS),
        "  evaluate_after: true\n",
    )
    assert job.parent.name == "transfer"
    config = DashboardConfig(kit=layout.admin_kit, port=0, server_address=layout.admin_address)
    with start_dashboard(config) as running:
        yield running


def _shots() -> Path | None:
    return DOCS_IMAGES if os.environ.get(SCREENSHOTS_ENV) == "1" else None


def _screenshot(driver: Any, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    # The whole page, not just the window: resize to its height first.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height) + 40, 600), 4000))
    driver.save_screenshot(str(folder / name))
    driver.set_window_size(1280, 1000)


def test_submit_and_watch_a_job(dashboard: RunningDashboard, browser: Any, tmp_path: Path) -> None:
    shots = _shots() or tmp_path
    wait = WebDriverWait(browser, 30)
    base = dashboard.url.split("?", 1)[0]

    # Federation: both sites connected, with what they run on.
    browser.get(dashboard.url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sites tbody tr")) == 2)
    wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
    rows = browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr")
    assert all("connected" in r.text and "CPUs" in r.text for r in rows), [r.text for r in rows]
    cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    assert all(c[4] == __version__ and c[6] != "–" for c in cells), cells  # shoal, cert expiry
    _check_accessibility(browser)
    _screenshot(browser, shots, "dashboard-federation.png")

    # Jobs: submit hello-numpy from the kit's transfer/ folder.
    browser.get(base + "jobs")
    source = wait.until(lambda d: d.find_element(By.ID, "source"))
    assert source.get_attribute("value") == "hello-numpy"
    _check_accessibility(browser)
    browser.find_element(By.CSS_SELECTOR, "#submit-form button[type=submit]").click()
    wait.until(lambda d: re.search(r"/jobs/[0-9a-f-]{36}$", d.current_url))
    job_id = browser.current_url.rsplit("/", 1)[1]
    browser.execute_script("window.__notReloaded = true")

    # The job page follows the job live: rounds on the charts, then COMPLETED.
    WebDriverWait(browser, JOB_TIMEOUT).until(
        lambda d: d.find_element(By.ID, "job-status").text == "FINISHED:COMPLETED"
    )
    wait.until(
        lambda d: d.find_element(By.ID, "chart-m-loss").get_attribute("data-rounds") == str(ROUNDS)
    )
    assert browser.execute_script("return window.__notReloaded === true"), "the page reloaded"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")) == ROUNDS
    answered = browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr td:nth-child(4)")
    assert {a.text for a in answered} == {"site-1, site-2"}
    assert browser.find_element(By.ID, "chart-duration").get_attribute("data-rounds") == str(ROUNDS)
    # The cross-site evaluation: the global model and each site's, at each site.
    wait.until(lambda d: d.find_element(By.ID, "matrix-section").is_displayed())
    heat_rows = browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in heat_rows] == [
        "global",
        "site-1",
        "site-2",
    ]
    assert "server" in browser.find_element(By.ID, "logs").text
    _check_accessibility(browser)
    _screenshot(browser, shots, "dashboard-job.png")

    # Download: into the kit's transfer/ (as download_job does), and to the browser.
    browser.find_element(By.CSS_SELECTOR, "[data-action=download_job]").click()
    wait.until(lambda d: "Downloaded the results" in d.find_element(By.ID, "messages").text)
    transfer = dashboard.session.kit.root / "transfer"
    assert (transfer / job_id / "run" / "metrics.jsonl").is_file()

    browser.get(base + "jobs")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]'))
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]')
    assert "FINISHED:COMPLETED" in row.text and f"{ROUNDS} / {ROUNDS}" in row.text
    _screenshot(browser, shots, "dashboard-jobs.png")

    # Upload the same job as an archive; then delete that second job.
    archive = pack_job(transfer / "hello-numpy", tmp_path / "hello-numpy.zip")
    browser.find_element(By.ID, "archive").send_keys(str(archive))
    browser.find_element(By.CSS_SELECTOR, "#submit-form button[type=submit]").click()
    wait.until(
        lambda d: re.search(r"/jobs/[0-9a-f-]{36}$", d.current_url) and job_id not in d.current_url
    )
    second = browser.current_url.rsplit("/", 1)[1]
    WebDriverWait(browser, JOB_TIMEOUT).until(
        lambda d: d.find_element(By.ID, "job-status").text == "FINISHED:COMPLETED"
    )
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-action=delete_job]").is_enabled())
    browser.find_element(By.CSS_SELECTOR, "[data-action=delete_job]").click()
    browser.switch_to.alert.accept()
    wait.until(lambda d: d.current_url == base + "jobs")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]'))
    assert not browser.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{second}"]')
    assert second not in [j.job_id for j in dashboard.session.list_jobs()]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


# -- accessibility ------------------------------------------------------------------

_UNLABELLED = """
return Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(e => e.type !== 'hidden')
  .filter(e => !(e.id && document.querySelector('label[for="' + e.id + '"]'))
               && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
  .map(e => e.outerHTML);
"""

_FOCUSABLE = """
return Array.from(document.querySelectorAll(
    'a[href], button, input, select, textarea, [tabindex]'))
  .filter(e => !e.disabled && e.tabIndex >= 0 && e.type !== 'hidden'
               && e.checkVisibility({visibilityProperty: true}))   // not in a closed <details>
  .filter(e => !e.closest('.u-legend, .u-over'))   // the chart's own mouse-only parts
  .map(e => e.id || e.outerHTML.slice(0, 80));
"""

_COLOURS = """
function bg(e) {
  for (; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (c && c !== 'transparent' && !c.endsWith(', 0)')) return c;
  }
  return 'rgb(255, 255, 255)';
}
const picked = document.querySelectorAll(
  'main p, main td, main th, main dd, main dt, main label, main h1, main h2, nav a, ' +
  '.badge, button, .who, footer p');
return Array.from(picked).filter(e => e.textContent.trim() && e.getClientRects().length)
  .map(e => [e.tagName + '.' + e.className + ': ' + e.textContent.trim().slice(0, 30),
             getComputedStyle(e).color, bg(e)]);
"""


def _rgb(css: str) -> tuple[float, float, float]:
    values = [float(v) for v in re.findall(r"[\d.]+", css)[:3]]
    return values[0], values[1], values[2]


def _luminance(css: str) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _rgb(css))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    """WCAG's contrast ratio of two CSS ``rgb(...)`` colours."""
    hi, lo = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula() -> None:
    assert contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)") == pytest.approx(21.0)
    assert contrast("rgb(118, 118, 118)", "rgb(255, 255, 255)") == pytest.approx(4.54, abs=0.01)


def _check_accessibility(driver: Any) -> None:
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert driver.find_elements(By.TAG_NAME, "main") and driver.find_elements(By.TAG_NAME, "nav")
    unlabelled = driver.execute_script(_UNLABELLED)
    assert not unlabelled, f"form controls without a label: {unlabelled}"
    low = [
        (what, round(contrast(fg, bg), 2))
        for what, fg, bg in driver.execute_script(_COLOURS)
        if contrast(fg, bg) < MIN_CONTRAST
    ]
    assert not low, f"text below {MIN_CONTRAST}:1 contrast: {low}"
    # Tab from the top reaches every control, in order, and nothing traps it.
    focusable = driver.execute_script(_FOCUSABLE)
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    reached = []
    for _ in range(len(focusable) + 5):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        reached.append(
            driver.execute_script(
                "const e = document.activeElement; return e.id || e.outerHTML.slice(0, 80)"
            )
        )
    missing = [f for f in focusable if f not in reached]
    assert not missing, f"not reachable with Tab: {missing}"
