"""The demo page in a real browser: headless Chromium, driven by Selenium,
against `likely serve` over HTTP. Pick a user, see the feed, click an item,
see the click stored and the feed change. The screenshot is kept in
reports/screenshots/ to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx2
import pytest

from likely.serve.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "reports" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "page-token"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason="needs Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where the sandbox refuses
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    # An explicit driver, so Selenium Manager never looks for one online.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_pick_a_user_see_the_feed_click_an_item(
    served_world, live_service, browser, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    store = f"sqlite:///{tmp_path / 'store.db'}"
    server = live_service(served_world["ranking"], served_world["recall"], store, TOKEN)
    wait = WebDriverWait(browser, 20)

    def shows(element_id: str, words: str):
        return ec.text_to_be_present_in_element((By.ID, element_id), words)

    def texts(css: str) -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]

    def scores() -> list[float]:
        return [float(s.removeprefix("p(click) ")) for s in texts("#feed .score")]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # The page lists users and shows the first one's feed by itself.
        browser.get(server.url + "/")
        wait.until(shows("status", "items for user"))
        users = Select(browser.find_element(By.ID, "user"))
        user = users.options[3].get_attribute("value")
        users.select_by_index(3)
        wait.until(shows("status", f"60 items for user {user} in"))
        assert "user_id\n" + user in browser.find_element(By.ID, "profile").text

        # Cards with ranks, ids, click probabilities falling down the feed,
        # and the item's features.
        cards = browser.find_elements(By.CSS_SELECTOR, "#feed .item")
        assert len(cards) == 60
        before = scores()
        assert before == sorted(before, reverse=True)
        assert all(0 < s < 1 for s in before)
        features = cards[0].find_elements(By.CSS_SELECTOR, "li")
        assert {f.text.split(":")[0] for f in features} >= {"category", "brand"}
        history = texts("#history li")

        # With the token, a click on the fifth card is stored, and the feed is
        # ranked again with the item at the end of the user's history.
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        item = cards[4].get_attribute("data-item-id")
        cards[4].click()
        wait.until(shows("log", f"click on item {item} at #5: 2 events stored"))
        wait.until(lambda _: texts("#history li")[-1:] == [item])
        after = texts("#history li")
        assert after[:-1] == history[len(history) - len(after) + 1 :]
        wait.until(lambda _: scores() != before)
    finally:
        # Whatever happened: on a failure the picture shows why.
        browser.save_screenshot(str(SCREENSHOTS / "feed.png"))

    with open_store(store, create=False) as opened:
        assert opened.count_events() == 2
        assert [str(i) for i in opened.history(user)[-1:]] == [item]
    assert httpx2.get(f"{server.url}/health").json()["events"] == 2
