"""What the browser app refuses, and what the browser refuses for it: a file over 25 MB
(picked or dropped, on a phone-width window in dark mode), the app without the token,
and a page on another origin trying to use the API and the events socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import Cluster, UiPage, drop_files

pytestmark = pytest.mark.browser

MAX_FILE = 26_214_400
PHONE = {"width": 390, "height": 800}



def test_a_file_over_25_mb_is_refused_with_a_readable_message(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path,
        tmp_path: Path) -> None:
    node = cluster.add("alice")
    group = node.create_group("Holiday")
    ui = open_ui("alice-phone", node, f"/g/{group}", viewport=PHONE, color_scheme="dark")
    page = ui.page
    expect(page.get_by_role("heading", name="Holiday")).to_be_visible()
    # Phone width: the chat takes the whole window, the list is one "Back" away.
    expect(page.get_by_role("complementary", name="Conversations")).to_be_hidden()
    expect(page.get_by_role("link", name="Back")).to_be_visible()

    big = tmp_path / "holiday.mov"
    with big.open("wb") as f:
        f.truncate(26 * 1024 * 1024)  # 26 MiB, sparse
    page.get_by_test_id("file-input").set_input_files(str(big))
    error = page.get_by_role("alert").filter(has_text="holiday.mov")
    expect(error).to_contain_text("26 MB")
    expect(error).to_contain_text("up to 25 MB")
    expect(page.get_by_role("list", name="Files to send")).to_have_count(0)
    ui.screenshot(output_dir, "too-large")

    # Dropped on the chat: the same refusal.
    page.get_by_role("button", name="Dismiss the error").click()
    expect(error).to_have_count(0)
    drop_files(page, {"name": "dropped.bin", "size": MAX_FILE + 1})
    expect(page.get_by_role("alert").filter(has_text="dropped.bin")).to_contain_text("up to 25 MB")

    # A file of exactly 25 MB is fine to stage (the limit is not off by one).
    edge = tmp_path / "edge.bin"
    with edge.open("wb") as f:
        f.truncate(MAX_FILE)
    page.get_by_test_id("file-input").set_input_files(str(edge))
    expect(page.get_by_role("list", name="Files to send")).to_contain_text("edge.bin")

    assert node.messages(group) == []  # nothing was sent


def test_without_the_token_the_ui_is_locked(cluster: Cluster,
                                            open_ui: Callable[..., UiPage]) -> None:
    node = cluster.add("alice")
    stranger = open_ui("stranger", node, unlock=False)
    page = stranger.page
    page.goto(f"{node.url}/g/{'0' * 32}")
    expect(page.get_by_role("heading", name="Parley is locked")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("No access key was given.")
    expect(page.locator(".shell")).to_have_count(0)
    assert page.evaluate("fetch('/api/v1/me').then(r => r.status)") == 401
    # The refused requests are the point here; Chromium logs each as an error.
    assert all("401" in text for text in stranger.console_errors), stranger.console_errors
    stranger.console_errors.clear()


FOREIGN_PAGE = """<!doctype html><meta charset="utf-8"><title>elsewhere</title>
<pre id="result">running</pre>
<script>
(async () => {
  const node = %(node)s, group = %(group)s, out = {};
  try {
    const r = await fetch(node + "/api/v1/me", {credentials: "include"});
    out.read = "status " + r.status;
  } catch (e) { out.read = "blocked"; }
  try {
    await fetch(node + "/api/v1/groups", {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify({name: "Evil"})});
    out.create = "sent";
  } catch (e) { out.create = "blocked"; }
  const form = new FormData();
  form.append("text", "evil");
  form.append("file", new Blob(["evil"], {type: "text/plain"}), "evil.txt");
  try {
    await fetch(node + "/api/v1/groups/" + group + "/messages",
                {method: "POST", mode: "no-cors", credentials: "include", body: form});
    out.upload = "sent";
  } catch (e) { out.upload = "blocked"; }
  out.events = await new Promise((resolve) => {
    const ws = new WebSocket(node.replace("http:", "ws:") + "/api/v1/events");
    ws.onopen = () => { resolve("opened"); ws.close(); };
    ws.onmessage = (m) => resolve("received " + m.data);
    ws.onerror = () => resolve("blocked");
    setTimeout(() => resolve("timeout"), 5000);
  });
  document.getElementById("result").textContent = JSON.stringify(out);
})();
</script>"""


@contextmanager
def foreign_site(html: str) -> Iterator[str]:
    """Another origin on loopback (127.0.0.1, another port: same-site, cross-origin)."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Wire:
    """What went over the wire to the node, as Chromium's DevTools protocol reports it:
    Playwright's request events show neither the cookie nor the status of a response
    the browser then withheld from the page."""

    def __init__(self, cdp: Any, prefix: str) -> None:
        self.prefix = prefix
        self.by_id: dict[str, dict[str, Any]] = {}
        for event, handler in (
                ("Network.requestWillBeSent", self._sent),
                ("Network.requestWillBeSentExtraInfo", self._headers),
                ("Network.responseReceivedExtraInfo", self._status),
                ("Network.webSocketCreated", self._ws_created),
                ("Network.webSocketWillSendHandshakeRequest", self._ws_request),
                ("Network.webSocketHandshakeResponseReceived", self._ws_response)):
            cdp.on(event, handler)
        cdp.send("Network.enable")

    def _entry(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.by_id.setdefault(params["requestId"], {})

    def _sent(self, params: dict[str, Any]) -> None:
        self._entry(params).update(method=params["request"]["method"], url=params["request"]["url"])

    def _headers(self, params: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in params.get("headers", {}).items()}
        self._entry(params)["cookie"] = headers.get("cookie", "")

    def _status(self, params: dict[str, Any]) -> None:
        self._entry(params)["status"] = params.get("statusCode")

    def _ws_created(self, params: dict[str, Any]) -> None:
        self._entry(params).update(method="WEBSOCKET", url=params["url"])

    def _ws_request(self, params: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in params["request"].get("headers", {}).items()}
        self._entry(params)["cookie"] = headers.get("cookie", "")

    def _ws_response(self, params: dict[str, Any]) -> None:
        self._entry(params)["status"] = params["response"].get("status")

    def to_node(self) -> list[dict[str, Any]]:
        ws_prefix = self.prefix.replace("http:", "ws:", 1)
        return [e for e in self.by_id.values()
                if str(e.get("url", "")).startswith((self.prefix, ws_prefix))]


def test_another_origin_cannot_use_the_api_or_the_events_socket(
        cluster: Cluster, open_ui: Callable[..., UiPage]) -> None:
    node = cluster.add("alice")
    group = node.create_group("Private")
    alice = open_ui("alice", node, f"/g/{group}")  # this browser now holds the cookie
    expect(alice.page.get_by_role("heading", name="Private")).to_be_visible()
    # Control: on its own origin the same browser reads the API and holds the socket.
    expect(alice.page.get_by_role("status", name="Connected to your node")).to_be_attached()
    cookie = f"parley_session_{node.url.rsplit(':', 1)[1]}"
    assert cookie in {c["name"] for c in alice.context.cookies()}

    html = FOREIGN_PAGE % {"node": json.dumps(node.url), "group": json.dumps(group)}
    with foreign_site(html) as origin:
        page = alice.context.new_page()
        wire = Wire(alice.context.new_cdp_session(page), node.url)
        page.goto(origin + "/")
        result = page.locator("#result")
        expect(result).not_to_have_text("running", timeout=15_000)
        outcome = json.loads(result.text_content() or "{}")
        page.close()

    # The page could neither read an answer nor open the socket (CORS, and CORP
    # same-origin even for no-cors requests)...
    assert outcome == {"read": "blocked", "create": "blocked", "upload": "blocked",
                       "events": "blocked"}, outcome
    # ...and the requests that did reach the node, with the session cookie (another port
    # of the same host is same-site, so SameSite=Strict lets it go along), were refused
    # by the node itself: nothing was created or posted.
    http = [e for e in wire.to_node() if e["method"] != "WEBSOCKET"]
    assert {(e["method"], e["url"][len(node.url):]) for e in http} == {
        ("GET", "/api/v1/me"), ("POST", "/api/v1/groups"),
        ("POST", f"/api/v1/groups/{group}/messages")}, http
    assert all(cookie + "=" in e.get("cookie", "") for e in http), http
    assert all(e.get("status") == 403 for e in http), http
    assert [e["url"] for e in wire.to_node() if e["method"] == "WEBSOCKET"] == [
        node.url.replace("http:", "ws:") + "/api/v1/events"]
    names = {g["name"] for g in node.ok("GET", "/api/v1/groups")["groups"]}
    assert names == {"Private"}
    assert node.messages(group) == []
