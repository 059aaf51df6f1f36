"""Browser sessions across restarts: the cookie comes from the session secret in the data
dir, so it outlives the process (in-process servers and a real node process restarted
on its port), until "sign out everywhere" (DELETE /api/v1/sessions) makes a new secret."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from tests.integration.messenger.conftest import NodeProc, free_port
from webapp.auth import SESSION_FILE
from webapp.context import SIGNED_OUT
from webapp.server import start_ui_server

from .test_server_helpers import ROUTES, Ui, read_json

JSON = {"Content-Type": "application/json"}


def start(data_dir: Path, port: int = 0) -> Ui:
    return Ui(start_ui_server(data_dir, api_routes=ROUTES, port=port,
                              dist_dir=data_dir / "no-dist"), data_dir)


async def signed_in(ui: Ui, cookie: str) -> bool:
    response = await ui.fetch("/api/v1/session", headers={"Cookie": cookie})
    assert response.code in (200, 401), response.code
    return response.code == 200


async def test_a_cookie_outlives_a_restart_and_the_token_does_not(tmp_path: Path) -> None:
    first = start(tmp_path / "node")
    cookie, old_token = await first.login(), first.token
    secret = (tmp_path / "node" / SESSION_FILE).read_text()
    await first.close()

    again = start(tmp_path / "node", port=first.port)
    try:
        assert await signed_in(again, cookie)
        assert (await again.fetch("/api/v1/ping", headers={"Cookie": cookie})).code == 200
        assert again.token != old_token  # the bearer token is still per run
        stale = await again.fetch("/api/v1/ping", headers={"Authorization": f"Bearer {old_token}"})
        assert stale.code == 401
        assert (tmp_path / "node" / SESSION_FILE).read_text() == secret
        assert secret.strip() not in cookie  # the cookie is derived, not the secret itself
    finally:
        await again.close()


async def test_sign_out_everywhere(tmp_path: Path) -> None:
    ui = start(tmp_path / "node")
    try:
        cookie = await ui.login()
        browser = await ui.ws({"Cookie": cookie, "Origin": f"http://{ui.host}"}, bearer=False)
        script = await ui.ws()
        assert (await read_json(browser))["type"] == "ready"
        assert (await read_json(script))["type"] == "ready"

        # Only with credentials and a JSON content type; GET is no way to do it.
        assert (await ui.fetch("/api/v1/sessions", method="DELETE", headers=JSON)).code == 401
        form = {"Cookie": cookie, "Content-Type": "text/plain"}
        assert (await ui.fetch("/api/v1/sessions", method="DELETE", headers=form)).code == 415
        assert (await ui.fetch("/api/v1/sessions", headers={"Cookie": cookie})).code == 405
        assert await signed_in(ui, cookie)

        response = await ui.fetch("/api/v1/sessions", method="DELETE",
                                  headers={"Cookie": cookie, **JSON})
        assert response.code == 204
        (cleared,) = response.headers.get_list("Set-Cookie")
        assert "max-age=0" in cleared.lower() or "expires=" in cleared.lower()
        assert not await signed_in(ui, cookie)
        # The browser's events socket is closed with 4001; the script's stays open.
        assert await browser.read_message() is None
        assert browser.close_code == SIGNED_OUT
        ui.server.ctx.hub.publish("echo", {"still": "here"})
        assert await read_json(script) == {"type": "echo", "data": {"still": "here"}}

        # Signing in again with the token works, and that cookie survives a restart
        # while the revoked one stays revoked.
        fresh = await ui.login()
        assert fresh != cookie and await signed_in(ui, fresh)
    finally:
        await ui.close()
    again = start(tmp_path / "node", port=ui.port)
    try:
        assert await signed_in(again, fresh)
        assert not await signed_in(again, cookie)
    finally:
        await again.close()


async def test_a_browser_socket_cannot_outlive_its_session(tmp_path: Path) -> None:
    ui = start(tmp_path / "node")
    try:
        cookie = await ui.login()
        browser = await ui.ws({"Cookie": cookie, "Origin": f"http://{ui.host}"}, bearer=False)
        assert (await read_json(browser))["type"] == "ready"
        await ui.fetch("/api/v1/sessions", method="DELETE", headers=ui.bearer | JSON)
        assert await browser.read_message() is None
        with pytest.raises(HTTPClientError) as refused:
            await ui.ws({"Cookie": cookie, "Origin": f"http://{ui.host}"}, bearer=False)
        assert refused.value.code == 401
    finally:
        await ui.close()


def session_call(url: str, method: str, cookie: str | None = None,
                 body: object = None) -> tuple[int, str]:
    headers = dict(JSON) if method != "GET" else {}
    if cookie:
        headers["Cookie"] = cookie
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + "/api/v1/session", data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Set-Cookie", "")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_a_restarted_node_process_keeps_the_browser_signed_in(tmp_path: Path) -> None:
    """`run.py node` on the same data dir and UI port: the cookie still opens the app."""
    node = NodeProc("solo", tmp_path / "solo", "",
                    extra=("--no-dht", "--ui-port", str(free_port())))
    node.start(ready="")
    try:
        status, set_cookie = session_call(node.url, "POST", body={"token": node.token})
        assert status == 204
        cookie = set_cookie.split(";", 1)[0]
        url, token = node.url, node.token
        node.stop()
        node.start(ready="")
        assert node.url == url and node.token != token
        assert session_call(node.url, "GET", cookie)[0] == 200
    finally:
        node.stop()
