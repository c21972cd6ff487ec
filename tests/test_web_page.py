"""The web page in a real browser: Playwright driving Debian's Chromium against a server
started here, on a store the tests also read and write directly ("another client").

Without Playwright or ``/usr/bin/chromium`` the tests skip, except under ``CI=true``
where they fail (``make test`` installs both).
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.memory import DictMemoryStore

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (make browser installs it)"
    return None


def _require() -> None:
    """Skip without Playwright or Chromium, but fail under CI, which must run these."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests cannot run under CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[DictMemoryStore, str]]:
    _require()
    from storekeeper.server import ServerThread, create_app

    store = DictMemoryStore()
    store.connect()
    with ServerThread(create_app(store)) as server:
        yield store, server.url
    store.disconnect()


@pytest.fixture
def store(served: tuple[DictMemoryStore, str]) -> DictMemoryStore:
    backing = served[0]
    for key in backing.query_keys():
        backing.delete(key)
    return backing


@pytest.fixture
def page(
    browser: Any, served: tuple[DictMemoryStore, str], store: DictMemoryStore
) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    opened.url_base = served[1]  # type: ignore[attr-defined]
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], f"the page's script raised: {errors}"


def _open(page: Any, fragment: str = "") -> None:
    page.goto(page.url_base + "/" + fragment)
    page.wait_for_selector("#live.on")  # the event stream is connected


def _entries(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("#entries li .open").all_inner_texts()]


def _http(base: str, method: str, path: str, body: bytes = b"") -> int:
    host = base.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_browse_folders(page: Any, store: DictMemoryStore) -> None:
    store.set("docs/guide/intro.txt", (b"intro", {}))
    store.set("docs/readme", (b"read me", {}))
    store.set("top level key", (b"x", {}))
    _open(page)
    page.wait_for_selector("#entries li")
    assert _entries(page) == ["docs/", "top level key"]
    page.get_by_role("link", name="docs/").click()
    page.wait_for_function("document.querySelector('#listing-title').textContent.includes('docs/')")
    page.wait_for_selector("#entries li[data-key='docs/readme']")
    assert _entries(page) == ["guide/", "readme"]
    assert page.locator("#crumbs a").all_inner_texts() == ["/", "docs/"]
    page.locator("#crumbs a", has_text="/").first.click()
    page.wait_for_selector("#entries li[data-key='top level key']")


def test_search_by_metadata(page: Any, store: DictMemoryStore) -> None:
    store.set("k1", (b"", {"author": "ali", "year": 2000}))
    store.set("k2", (b"", {"author": "ali", "year": "2000"}))
    store.set("k3", (b"", {"author": "bob", "year": 2000}))
    _open(page)
    page.fill("#terms .term:nth-child(1) [name=name]", "author")
    page.fill("#terms .term:nth-child(1) [name=value]", "ali")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#listing-title:has-text('Search results: 2 keys')")
    assert _entries(page) == ["k1", "k2"]
    page.click("#add-term")
    page.fill("#terms .term:nth-child(2) [name=name]", "year")
    page.fill("#terms .term:nth-child(2) [name=value]", "2000")  # JSON: the number
    page.click("#search button[type=submit]")
    page.wait_for_selector("#listing-title:has-text('Search results: 1 key')")
    assert _entries(page) == ["k1"]


def test_view_and_edit_metadata(page: Any, store: DictMemoryStore) -> None:
    store.set("doc", (b"data", {"title": "Old", "n": 1}))
    _open(page)
    page.get_by_role("button", name="doc").click()
    page.wait_for_selector("#details:not([hidden])")
    assert json.loads(page.input_value("#metadata")) == {"title": "Old", "n": 1}
    assert page.inner_text("#details-size") == "4 bytes"
    page.fill("#metadata", '{"title": "New \u00e9", "tags": ["a", "b"]}')
    page.click("#save-metadata")
    page.wait_for_selector("#status:has-text('Saved the metadata')")
    assert store.get_metadata("doc") == {"title": "New \u00e9", "tags": ["a", "b"]}
    assert store.to_bytes("doc") == b"data"
    page.fill("#metadata", "{not json")
    page.click("#save-metadata")
    page.wait_for_selector("#status.error:has-text('not valid JSON')")
    assert store.get_metadata("doc") == {"title": "New \u00e9", "tags": ["a", "b"]}


def test_download(page: Any, store: DictMemoryStore) -> None:
    data = bytes(range(256)) * 1000
    store.set("files/blob.bin", (data, {}))
    _open(page, "#files%2F")
    page.get_by_role("button", name="blob.bin").click()
    page.wait_for_selector("#details:not([hidden])")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "blob.bin"
    assert Path(download.path()).read_bytes() == data


def test_upload_by_drag_and_drop_with_progress(page: Any, store: DictMemoryStore) -> None:
    _open(page, "#up%2F")
    size = 3 * 1024 * 1024 + 5
    # A slow uplink (2 MB/s), so the upload takes long enough to be seen part-way.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": 2_000_000})
    page.evaluate(
        """() => {
            window.partway = [];
            window.watcher = setInterval(() => {
                for (const bar of document.querySelectorAll("#uploads progress")) {
                    if (bar.value > 0 && bar.value < bar.max) window.partway.push(bar.value);
                }
            }, 5);
        }"""
    )
    page.evaluate(
        """(size) => {
            const bytes = new Uint8Array(size);
            for (let i = 0; i < size; i++) bytes[i] = i % 251;
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped file.bin"));
            transfer.items.add(new File(["small"], "second.txt"));
            const zone = document.getElementById("drop");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true}));
            }
        }""",
        size,
    )
    page.wait_for_selector("#status:has-text('Uploaded 2 files')")
    partway = page.evaluate("clearInterval(window.watcher) || window.partway")
    assert len(set(partway)) >= 2, partway  # the bar moved during the upload
    cdp.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": -1})
    assert store.to_bytes("up/dropped file.bin") == bytes(i % 251 for i in range(size))
    assert store.to_bytes("up/second.txt") == b"small"
    bars = page.locator("#uploads progress")
    assert bars.count() == 2
    for index in range(2):
        bar = bars.nth(index)
        assert bar.get_attribute("aria-label").startswith("Uploading up/")
        assert page.evaluate("(b) => b.value === b.max && b.max > 0", bar.element_handle())
    page.wait_for_selector("#entries li[data-key='up/dropped file.bin']")
    # The same through the file chooser (what a keyboard user opens).
    page.set_input_files(
        "#file-input", files=[{"name": "chosen.txt", "mimeType": "text/plain", "buffer": b"chosen"}]
    )
    page.wait_for_selector("#entries li[data-key='up/chosen.txt']")
    assert store.to_bytes("up/chosen.txt") == b"chosen"


def test_delete_asks_first(page: Any, store: DictMemoryStore) -> None:
    store.set("victim", (b"v", {}))
    store.set("other", (b"o", {}))
    _open(page)
    page.get_by_role("button", name="victim").click()
    page.click("#delete")
    page.wait_for_selector("#confirm-dialog[open]")
    page.get_by_role("button", name="Cancel").click()
    assert store.exists("victim")
    page.click("#delete")
    page.click("#confirm-delete")
    page.wait_for_selector("#status:has-text('Deleted victim')")
    assert not store.exists("victim")
    page.wait_for_selector("#entries li[data-key='victim']", state="detached")
    assert _entries(page) == ["other"]


def test_changes_by_another_client_appear_live(
    page: Any, store: DictMemoryStore, served: tuple[DictMemoryStore, str]
) -> None:
    store.set("watched", (b"w", {"v": 1}))
    _open(page)
    page.get_by_role("button", name="watched").click()
    page.wait_for_selector("#details:not([hidden])")
    assert _http(served[1], "PUT", "/store/arrived%20live/data", b"new") == 204
    page.wait_for_selector("#entries li[data-key='arrived live']")
    assert _http(served[1], "PUT", "/store/watched/metadata", b'{"v": 2}') == 204
    page.wait_for_selector("#details-changed:not([hidden])")
    page.click("#details-reload")
    page.wait_for_function("document.querySelector('#metadata').value.includes('2')")
    assert json.loads(page.input_value("#metadata")) == {"v": 2}
    assert _http(served[1], "DELETE", "/store/arrived%20live") == 204
    page.wait_for_selector("#entries li[data-key='arrived live']", state="detached")


def test_keyboard_only(page: Any, store: DictMemoryStore) -> None:
    store.set("a/b", (b"", {"k": 1}))
    _open(page)
    page.wait_for_selector("#entries li")
    page.focus("#entries li .open")
    page.keyboard.press("Enter")  # into the folder a/
    page.wait_for_selector("#entries li[data-key='a/b']")
    page.focus("#entries li[data-key='a/b'] .open")
    page.keyboard.press("Enter")
    page.wait_for_selector("#details:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "metadata"
    page.keyboard.press("Escape")
    page.wait_for_selector("#details", state="hidden")


def test_readable_on_a_phone(page: Any, store: DictMemoryStore) -> None:
    store.set("a rather long key name that must wrap on a narrow screen/" + "x" * 80, (b"", {}))
    page.set_viewport_size({"width": 360, "height": 640})
    _open(page)
    page.wait_for_selector("#entries li")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    font = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert font >= 14
    height = page.evaluate(
        "document.querySelector('#entries .open').getBoundingClientRect().height"
    )
    assert height >= 36  # a finger-sized target
    assert re.search(r"width=device-width", page.content())


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[DictMemoryStore, str]]:
    """A server that requires users: ali may read everything, bob only his own keys."""
    _require()
    from storekeeper.composite.auth import SimpleAuthStore, make_encoder
    from storekeeper.server import ServerThread, create_app

    backing = DictMemoryStore()
    backing.connect()
    auth = SimpleAuthStore(backing, make_encoder(b"pepper", n=2))
    auth.add_user("ali", "open sesame")
    auth.add_user("bob", "bob's secret")
    backing.set("shared/open", (b"for everyone", {}))
    with ServerThread(create_app(backing, auth=auth)) as server:
        yield backing, server.url
    backing.disconnect()


def _info_status(url: str, token: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/info", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_log_in_when_the_server_asks(browser: Any, guarded: tuple[DictMemoryStore, str]) -> None:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(guarded[1] + "/")
        page.wait_for_selector("#login-dialog[open]")
        page.fill("#login-user", "ali")
        page.fill("#login-password", "wrong")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#login-error:not(:empty)")
        assert page.is_visible("#login-dialog[open]")
        page.fill("#login-password", "open sesame")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#live.on")
        page.wait_for_selector("#entries li[data-key='shared/']")
        assert page.inner_text("#user") == "Logged in as ali"
        # What ali uploads is owned by ali, and the live stream (with a token) works.
        page.set_input_files(
            "#file-input", files=[{"name": "mine.txt", "mimeType": "text/plain", "buffer": b"m"}]
        )
        page.wait_for_selector("#entries li[data-key='mine.txt']")
        assert guarded[0].to_bytes("mine.txt") == b"m"
        token = page.evaluate("sessionStorage.getItem('storekeeper-token')")
        assert _info_status(guarded[1], token) == 200
        page.click("#logout-button")
        page.wait_for_selector("#login-dialog[open]")
        assert page.locator("#entries li").count() == 0
        assert _info_status(guarded[1], token) == 401  # the server forgot the token
    finally:
        context.close()


def test_a_read_only_server_offers_no_writes(browser: Any) -> None:
    _require()
    from storekeeper.server import ServerThread, create_app

    backing = DictMemoryStore()
    backing.connect()
    backing.set("k", (b"data", {"a": 1}))
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        with ServerThread(create_app(backing, read_only=True)) as server:
            page = context.new_page()
            page.goto(server.url + "/")
            page.get_by_role("button", name="k", exact=True).click()
            page.wait_for_selector("#details:not([hidden])")
            for selector in ("#drop", "#save-metadata", "#delete", "#replace-label"):
                assert not page.is_visible(selector), selector
            assert page.is_visible("#download")
            page.close()
    finally:
        context.close()
        backing.disconnect()
