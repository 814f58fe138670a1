"""The dashboard in a real browser (headless Chromium driven by selenium) against the session's
3-peer cluster: the page shows the peers, the plan's stages and the measured links, then, with
no reload, a chat completion's per-stage timing and the new token count arrive over the
server-sent events. A screenshot of the page is kept (EDGESHARD_DASHBOARD_SCREENSHOT: where to
also write it, e.g. docs/dashboard.png)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from ..peers import Peer, client, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: webdriver.Chrome, check: Callable[[], T | None], what: str, timeout_s: float = 60) -> T:
    """Poll the page until `check` gives a value (a redraw may swap elements under it)."""

    def attempt(_driver: Any) -> T | None:
        try:
            return check()
        except StaleElementReferenceException:
            return None

    try:
        value: T = WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(attempt)
        return value
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"the page never showed {what}; it shows:\n{body[:3000]}") from None


# Every read of the page is one script call: the page redraws its blocks on each event, so an
# element found one WebDriver call earlier may already be stale (seen in CI, twice).
def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => (e.innerText ?? e.textContent).trim())", css
    )
    return found


def text_at(driver: webdriver.Chrome, css: str) -> str:
    found = texts(driver, css)
    assert len(found) == 1, (css, found)
    return found[0]


def shown_links(driver: webdriver.Chrome) -> dict[tuple[str, str], str]:
    cells: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#links td.link')]"
        ".map(c => [c.dataset.from || '', c.dataset.to || '', c.innerText.trim()])"
    )
    return {(source, to): shown for source, to, shown in cells}


def plan_bar(driver: webdriver.Chrome) -> list[tuple[str, str, float]]:
    """Each segment of the plan bar: its device, the name it shows, its width in pixels."""
    segments: list[list[Any]] = driver.execute_script(
        "return [...document.querySelectorAll('#plan-bar .segment')]"
        ".map(e => [e.dataset.device, e.querySelector('b').innerText.trim(), e.getBoundingClientRect().width])"
    )
    return [(str(device), str(name), float(width)) for device, name, width in segments]


def status_links(status: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(p["name"], link["name"]): link["mbps"] for p in status["peers"] for link in p["links"]}


def test_the_dashboard_shows_the_cluster_and_a_reply_arrives_live(
    surface_cluster: list[Peer], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    peer = surface_cluster[0]
    names = sorted(p.name for p in surface_cluster)
    status = wait_until(lambda: s if (s := peer.status()) and s["ready"] else None, 120, "a ready peer")
    browser.get(peer.api + "/")
    assert browser.title == "EdgeShard"

    shown = until(
        browser,
        lambda: r if sorted(r := texts(browser, "#peers tbody tr td:first-child b")) == names else None,
        "the three peers",
    )
    assert sorted(shown) == names
    healths = until(
        browser,
        lambda: h if (h := texts(browser, "#peers tbody .chip")) and set(h) == {"alive"} else None,
        "every peer alive",
    )
    assert len(healths) == 3

    # The plan bar: one segment per stage, in order, named by device, as wide as its units.
    stages = status["plan"]["stages"]
    assert len(stages) == 3  # 256 MiB each: the model needs all three
    segments = until(browser, lambda: s if len(s := plan_bar(browser)) == len(stages) else None, "the plan bar")
    assert [device for device, _name, _width in segments] == [st["device"] for st in stages]
    assert [name for _device, name, _width in segments] == [st["device"] for st in stages]
    widths = [width for _device, _name, width in segments]
    units = [st["end"] - st["start"] for st in stages]
    for width, count in zip(widths, units, strict=True):  # flex-grow by units: widths in proportion
        assert abs(width / sum(widths) - count / sum(units)) < 0.05
    assert set(texts(browser, "#plan-legend b")) == set(names)

    # The links: every measured link, with its bandwidth and round trip, in the matrix and the graph.
    def links_match() -> dict[tuple[str, str], str] | None:
        current = peer.status()
        cells = shown_links(browser)
        if current is None or not cells or set(cells) != set(status_links(current)):
            return None
        return cells

    cells = until(browser, links_match, "the measured links")
    assert len(cells) == 6  # every peer measures the other two
    for cell in cells.values():
        assert re.fullmatch(r"[\d.]+ [MG]bps · [\d.]+ ms", cell), cell
    labels = texts(browser, "#links-graph text.edge-label")
    assert len(labels) == 6 and all("bps" in label for label in labels)

    # A reply, and the page updates without a reload: its per-stage timing and the token count.
    browser.execute_script("window.__sameDocument = 'kept'")
    tokens_before = int(text_at(browser, "#tokens"))
    answer = client(peer).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], temperature=0, max_tokens=16
    )
    generated = answer.usage.completion_tokens if answer.usage else 0
    assert generated > 0
    until(
        browser,
        lambda: browser.execute_script("return document.getElementById('timing').dataset.reply") == answer.id or None,
        "the reply's timing",
        30,
    )
    # One read of the whole block: the page redraws it on every event, which would leave
    # elements found one call earlier stale.
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#timing [data-stage]')].map(r => [r.dataset.stage, r.innerText])"
    )
    assert [stage for stage, _text in rows] == [st["device"] for st in stages]
    for _stage, timing in rows:
        assert re.search(r"[\d.]+ \+ [\d.]+ \+ [\d.]+ ms \(predicted [\d.]+\)", timing), timing
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timing [data-link]")) == len(stages) + 1
    tokens = until(
        browser,
        lambda: t if (t := int(text_at(browser, "#tokens"))) >= tokens_before + generated else None,
        "the new token count",
        30,
    )
    assert tokens == tokens_before + generated  # nothing else asked this API meanwhile
    cached, prompt = (int(n) for n in text_at(browser, "#prefix-cache").split(" / "))
    assert prompt >= answer.usage.prompt_tokens > 0 and 0 <= cached < prompt  # type: ignore[union-attr]
    assert browser.execute_script("return window.__sameDocument") == "kept"  # no reload: the stream did it
    assert browser.find_elements(By.CSS_SELECTOR, f'#replies tr[data-reply="{answer.id}"]')
    assert text_at(browser, "#live") == "● live"

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 140, 2400))  # the whole page, 1280 wide
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    if target := os.environ.get("EDGESHARD_DASHBOARD_SCREENSHOT"):
        browser.save_screenshot(target)
