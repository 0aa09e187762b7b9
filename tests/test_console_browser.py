"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): sign in, watch a send reach DELIVERED, text stays text, tenants stay apart, a form
without its CSRF token is refused.

With PIGEON_CONSOLE_SCREENSHOTS=DIR the dashboard and a message's timeline are saved there as
PNG files (how the README's screenshots are made).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import Server, wait_for_final
from tests.factories import Tenant, create_tenant, make_user

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
SCRIPT_TEXT = "<script>window.pwned = 1</script> Your code is 4711"

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="needs Debian's chromium and chromium-driver (make test installs them)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile."""
    profile = tempfile.mkdtemp(prefix="pigeon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: WebDriver, condition: object, timeout: float = 15) -> object:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)  # type: ignore[arg-type]
    except TimeoutException:
        raise AssertionError(f"timed out at {driver.current_url}:\n{driver.page_source}") from None


def sign_in(driver: WebDriver, server: Server, tenant: Tenant) -> None:
    driver.delete_all_cookies()
    driver.get(f"{server.base_url}/console/login")
    driver.find_element(By.ID, "api_key").send_keys(tenant.api_key)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "by-channel"))


def send(server: Server, tenant: Tenant, user_id: str, text: str) -> str:
    with server.client(tenant.api_key) as client:
        answer = client.post(f"/v1/users/{user_id}/message/sms", json={"content": {"text": text}})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["messages"][0]["messageId"])


def screenshot(driver: WebDriver, name: str) -> None:
    """The whole page as a PNG, when PIGEON_CONSOLE_SCREENSHOTS names a directory."""
    directory = os.environ.get("PIGEON_CONSOLE_SCREENSHOTS")
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 100, 2400))
    driver.save_screenshot(str(Path(directory) / name))
    driver.set_window_size(1280, 900)


def test_sign_in_and_watch_a_send_reach_delivered(browser: WebDriver, server: Server) -> None:
    tenant = create_tenant(server)
    with server.client(tenant.api_key) as client:
        user = make_user(client)
    sign_in(browser, server, tenant)
    cookie = browser.get_cookie("pigeon_console")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert tenant.api_key not in cookie["value"]
    assert tenant.api_key not in browser.page_source
    assert tenant.api_key not in browser.current_url

    browser.get(f"{server.base_url}/console/messages")
    assert "No messages." in browser.find_element(By.ID, "message-rows").text
    message_id = send(server, tenant, user["id"], SCRIPT_TEXT)
    # The list refreshes itself: the new message appears without a reload.
    row = f'tr[data-message-id="{message_id}"] a'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    browser.find_element(By.CSS_SELECTOR, row).click()

    wait_for(browser, lambda d: "DELIVERED" in d.find_element(By.ID, "current-status").text)
    events = browser.find_element(By.ID, "events").text
    for name in ("PENDING_ACCEPTED", "PENDING_ENROUTE", "DELIVERED_TO_HANDSET"):
        assert name in events
    attempts = browser.find_element(By.ID, "attempts").text
    assert "sandbox" in attempts
    assert "accepted" in attempts
    # The text is shown as text, and its script never ran.
    assert browser.find_element(By.ID, "content-text").text == SCRIPT_TEXT
    assert browser.execute_script("return window.pwned === undefined") is True
    screenshot(browser, "console-message.png")

    # More of the day: an email, and SMS the sandbox fails (0002) and refuses (0005).
    with server.client(tenant.api_key) as client:
        email = {"content": {"subject": "Receipt", "text": "Thanks"}}
        sent = [client.post(f"/v1/users/{user['id']}/message/email", json=email)]
        for number in ("385981230002", "385981230005"):
            body = {"to": number, "content": {"text": "x"}}
            sent.append(client.post("/v1/apps/message/sms", json=body))
        for answer in sent:
            wait_for_final(client, answer.json()["messages"][0]["messageId"])
    browser.get(f"{server.base_url}/console")
    rows = {
        row.find_element(By.TAG_NAME, "td").text: [
            cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td.num")
        ]
        for row in browser.find_elements(By.CSS_SELECTOR, "#by-channel tbody tr")
    }
    # PENDING, UNDELIVERABLE, DELIVERED, EXPIRED, REJECTED
    assert rows["sms"] == ["0", "1", "1", "0", "1"]
    assert rows["email"] == ["0", "0", "1", "0", "0"]
    assert browser.find_element(By.ID, "total").text == "4"
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar.accepted")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar.delivered")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar.failed")
    screenshot(browser, "console-dashboard.png")

    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "login-form"))
    assert browser.get_cookie("pigeon_console") is None
    browser.get(f"{server.base_url}/console/messages")
    assert browser.find_elements(By.ID, "login-form")  # signed out: back to the sign-in page


def test_another_tenants_message_is_not_found(browser: WebDriver, server: Server) -> None:
    mine, theirs = create_tenant(server), create_tenant(server)
    with server.client(theirs.api_key) as client:
        their_user = make_user(client)
    their_message = send(server, theirs, their_user["id"], "for the other tenant only")
    sign_in(browser, server, mine)

    browser.get(f"{server.base_url}/console/messages/{their_message}")
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text
    assert f"message {their_message} not found" in browser.find_element(By.ID, "error-detail").text
    assert "for the other tenant only" not in browser.page_source
    browser.get(f"{server.base_url}/console/users/{their_user['id']}")
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(f"{server.base_url}/console/messages")
    assert their_message not in browser.page_source


def test_a_form_without_its_csrf_token_is_refused(browser: WebDriver, server: Server) -> None:
    tenant = create_tenant(server)
    sign_in(browser, server, tenant)
    browser.get(f"{server.base_url}/console/keys")
    keys_before = len(browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr"))

    browser.execute_script("document.querySelector('#create-key input[name=csrf_token]').remove()")
    browser.find_element(By.CSS_SELECTOR, "#create-key button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "error-detail"))
    assert "403" in browser.find_element(By.TAG_NAME, "h1").text
    assert "CSRF" in browser.find_element(By.ID, "error-detail").text

    browser.get(f"{server.base_url}/console/keys")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr")) == keys_before
    # With its token the same form works, and the new key is shown this once.
    browser.find_element(By.CSS_SELECTOR, "#create-key button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "new-key-value"))
    new_key = browser.find_element(By.ID, "new-key-value").text
    with server.client(new_key) as client:
        assert client.get("/v1/messages").status_code == 200
    browser.get(f"{server.base_url}/console/keys")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr")) == keys_before + 1
    assert new_key not in browser.page_source


def test_revoking_a_key_in_the_console_refuses_it(browser: WebDriver, server: Server) -> None:
    tenant = create_tenant(server)
    sign_in(browser, server, tenant)
    browser.get(f"{server.base_url}/console/keys")
    browser.find_element(By.CSS_SELECTOR, "#create-key button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "new-key-value"))
    new_key = browser.find_element(By.ID, "new-key-value").text
    new_id = browser.find_element(By.CSS_SELECTOR, "#new-key code").text
    browser.get(f"{server.base_url}/console/keys")
    browser.execute_script("window.confirm = () => true")
    form = f'form[action="/console/keys/{new_id}/revoke"] button'
    browser.find_element(By.CSS_SELECTOR, form).click()
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, form))
    deadline = time.monotonic() + 5  # the API's key cache answers for up to a second
    while True:
        status = httpx.get(
            f"{server.base_url}/v1/messages", headers={"x-api-key": new_key}, timeout=10
        ).status_code
        if status == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 401
