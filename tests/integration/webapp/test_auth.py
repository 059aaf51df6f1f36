"""Authentication and request policy of the UI server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Callable

import pytest

from webapp.auth import SESSION_FILE, TOKEN_FILE, read_ui_token

from .test_server_helpers import Ui


def error_of(response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)["error"]


# Credentials


async def test_no_token_is_401_json(ui: Ui) -> None:
    response = await ui.fetch("/api/v1/ping")
    assert response.code == 401
    assert error_of(response) == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("authorization", [
    "Bearer wrong", "Bearer ", "Basic dXNlcjpwYXNz", "bearer x" * 3, "Token abc",
])
async def test_wrong_credentials_are_401(ui: Ui, authorization: str) -> None:
    response = await ui.fetch("/api/v1/ping", headers={"Authorization": authorization})
    assert response.code == 401
    assert error_of(response) == "unauthenticated"


async def test_right_bearer_is_200(ui: Ui) -> None:
    response = await ui.fetch("/api/v1/ping", headers=ui.bearer)
    assert response.code == 200
    assert json.loads(response.body) == {"pong": True, "node": "example-node"}


async def test_bearer_scheme_is_case_insensitive(ui: Ui) -> None:
    response = await ui.fetch("/api/v1/ping", headers={"Authorization": f"bearer {ui.token}"})
    assert response.code == 200


async def test_token_of_another_run_is_refused(start_ui: Callable[..., Ui]) -> None:
    first, second = start_ui(), start_ui()
    assert first.token != second.token
    response = await second.fetch("/api/v1/ping", headers=first.bearer)
    assert response.code == 401


@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/api", "/api/", "/api/v2/ping"])
async def test_unknown_api_path_needs_auth_before_404(ui: Ui, path: str) -> None:
    assert (await ui.fetch(path)).code == 401
    response = await ui.fetch(path, headers=ui.bearer)
    assert response.code == 404
    assert error_of(response) == "not_found"


# Token -> cookie exchange


async def test_token_exchange_sets_strict_httponly_cookie(ui: Ui) -> None:
    response = await ui.fetch("/api/v1/session", method="POST", json_body={"token": ui.token})
    assert response.code == 204
    (set_cookie,) = response.headers.get_list("Set-Cookie")
    name_value, *attributes = [part.strip() for part in set_cookie.split(";")]
    flags = {a.split("=", 1)[0].lower(): a.split("=", 1)[-1] for a in attributes}
    assert "httponly" in flags
    assert flags["samesite"].lower() == "strict"
    assert flags["path"] == "/"
    assert "secure" not in flags  # plain http on loopback: Secure would drop it
    assert "expires" not in flags and "max-age" not in flags  # a session cookie
    name, value = name_value.split("=", 1)
    assert name == f"parley_session_{ui.port}"
    assert value and value != ui.token  # the cookie jar never holds the bearer token


async def test_cookie_authenticates(ui: Ui) -> None:
    cookie = await ui.login()
    assert (await ui.fetch("/api/v1/ping", headers={"Cookie": cookie})).code == 200
    session = await ui.fetch("/api/v1/session", headers={"Cookie": cookie})
    assert session.code == 200
    assert json.loads(session.body) == {"authenticated": True}


async def test_forged_cookie_is_refused(ui: Ui) -> None:
    name = f"parley_session_{ui.port}"
    for value in ("x", ui.token, "A" * 43):
        response = await ui.fetch("/api/v1/ping", headers={"Cookie": f"{name}={value}"})
        assert response.code == 401


async def test_wrong_bearer_next_to_good_cookie_is_refused(ui: Ui) -> None:
    cookie = await ui.login()
    response = await ui.fetch("/api/v1/ping",
                              headers={"Cookie": cookie, "Authorization": "Bearer nope"})
    assert response.code == 401


async def test_session_probe_without_cookie_is_401(ui: Ui) -> None:
    assert (await ui.fetch("/api/v1/session")).code == 401


@pytest.mark.parametrize("body", [
    {"token": "wrong"}, {"token": 5}, {"token": None},
])
async def test_exchange_with_wrong_token_sets_no_cookie(ui: Ui, body: object) -> None:
    response = await ui.fetch("/api/v1/session", method="POST", json_body=body)
    assert response.code == 401
    assert not response.headers.get_list("Set-Cookie")


async def test_exchange_refuses_bad_bodies(ui: Ui) -> None:
    extra = await ui.fetch("/api/v1/session", method="POST",
                           json_body={"token": ui.token, "admin": True})
    assert extra.code == 400 and not extra.headers.get_list("Set-Cookie")
    big = await ui.fetch("/api/v1/session", method="POST",
                         json_body={"token": ui.token + "x" * 2000})
    assert big.code == 413


async def test_exchange_refuses_form_posts_and_foreign_origins(ui: Ui) -> None:
    form = await ui.fetch("/api/v1/session", method="POST", body=f"token={ui.token}",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.code == 415 and error_of(form) == "unsupported_media_type"
    foreign = await ui.fetch("/api/v1/session", method="POST", json_body={"token": ui.token},
                             headers={"Origin": "http://evil.example"})
    assert foreign.code == 403 and not foreign.headers.get_list("Set-Cookie")


async def test_logout_clears_the_cookie(ui: Ui) -> None:
    cookie = await ui.login()
    response = await ui.fetch("/api/v1/session", method="DELETE", headers={
        "Cookie": cookie, "Content-Type": "application/json"})
    assert response.code == 204
    (set_cookie,) = response.headers.get_list("Set-Cookie")
    assert set_cookie.split(";")[0] in (f'parley_session_{ui.port}=""',
                                        f"parley_session_{ui.port}=")
    assert "expires=" in set_cookie.lower() or "max-age=0" in set_cookie.lower()


async def test_token_never_reaches_the_logs(ui: Ui, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cookie = await ui.login()
    await ui.fetch("/", headers={"Cookie": cookie})
    await ui.fetch("/api/v1/ping", headers=ui.bearer)
    await ui.fetch(f"/api/v1/ping?token={ui.token}")  # a user pasting it into a URL
    await ui.fetch(f"/?token={ui.token}", headers={"Cookie": cookie})
    await ui.fetch(f"/../etc/passwd?token={ui.token}", headers={"Cookie": cookie})  # logged 403
    await ui.fetch("/api/v1/session", method="POST", json_body={"token": ui.token + "x"})
    session = cookie.split("=", 1)[1]
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "POST /api/v1/session" in logged  # the capture did see the exchange
    assert "GET /api/v1/ping" in logged
    assert "GET /../etc/passwd" in logged
    assert ui.token not in logged
    assert session not in logged
    assert ui.token not in repr(ui.server) + repr(ui.server.ctx)


# Token file


async def test_token_file_is_private_and_matches(ui: Ui) -> None:
    path = ui.data_dir / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((ui.data_dir / SESSION_FILE).stat().st_mode) == 0o600
    assert read_ui_token(ui.data_dir) == ui.token
    # No temp files left.
    assert sorted(p.name for p in ui.data_dir.iterdir()) == sorted([TOKEN_FILE, SESSION_FILE])
    assert ui.server.url == f"http://127.0.0.1:{ui.port}/#token={ui.token}"


async def test_token_file_is_removed_on_stop(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui()
    await ui.server.stop()
    assert not (ui.data_dir / TOKEN_FILE).exists()


# Host (DNS rebinding), Origin, Sec-Fetch-Site


@pytest.mark.parametrize("host", [
    "evil.example:{port}", "evil.example", "127.0.0.1", "127.0.0.1:1", "localhost",
    "127.0.0.1:{port}.evil.example", "[::1]:{port}", "0.0.0.0:{port}", "",
])
async def test_foreign_host_is_refused_even_with_token(ui: Ui, host: str) -> None:
    headers = {"Host": host.format(port=ui.port), **ui.bearer}
    for path in ("/api/v1/ping", "/", "/_ui/ui.css"):
        response = await ui.fetch(path, headers=headers)
        assert response.code == 403, (path, host)
        assert error_of(response) == "bad_host"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}"])
async def test_own_host_names_are_accepted(ui: Ui, host: str) -> None:
    response = await ui.fetch("/api/v1/ping", headers={"Host": host.format(port=ui.port),
                                                       **ui.bearer})
    assert response.code == 200


@pytest.mark.parametrize("origin", [
    "http://evil.example", "null", "http://127.0.0.1", "http://127.0.0.1:1",
    "https://127.0.0.1:{port}", "http://localhost:{port}", "http://127.0.0.1:{port}/",
    "http://127.0.0.1:{port}.evil.example",
])
async def test_foreign_origin_is_403_even_with_token(ui: Ui, origin: str) -> None:
    for method in ("GET", "POST"):
        response = await ui.fetch("/api/v1/ping" if method == "GET" else "/api/v1/echo",
                                  method=method, json_body={} if method == "POST" else None,
                                  headers={"Origin": origin.format(port=ui.port), **ui.bearer})
        assert response.code == 403, (origin, method)
        assert error_of(response) == "forbidden_origin"


async def test_own_origin_is_accepted(ui: Ui) -> None:
    for host in (f"127.0.0.1:{ui.port}", f"localhost:{ui.port}"):
        response = await ui.fetch("/api/v1/echo", method="POST", json_body={"a": 1}, headers={
            "Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin",
            **ui.bearer})
        assert response.code == 200
        assert json.loads(response.body) == {"a": 1}


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_cross_site_fetch_metadata_is_refused(ui: Ui, site: str) -> None:
    cookie = await ui.login()
    response = await ui.fetch("/api/v1/ping", headers={"Cookie": cookie, "Sec-Fetch-Site": site})
    assert response.code == 403
    assert error_of(response) == "forbidden_origin"


# Content types and body limits


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/jsonp", "text/json",
])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_unsafe_methods_need_json(ui: Ui, method: str, content_type: str | None) -> None:
    headers = dict(ui.bearer)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await ui.fetch("/api/v1/echo", method=method, body=b"{}", headers=headers)
    assert response.code == 415
    assert error_of(response) == "unsupported_media_type"


async def test_a_bodiless_delete_with_a_bearer_token_is_accepted(ui: Ui) -> None:
    """Issue 15 finding 8: as ``curl -X DELETE -H "Authorization: Bearer ..."`` sends it;
    a body without a JSON type is still refused."""
    response = await ui.fetch("/api/v1/echo", method="DELETE", headers=ui.bearer)
    assert response.code == 200 and json.loads(response.body) == {"deleted": True}
    assert "Content-Type" not in response.request.headers
    refused = await ui.fetch("/api/v1/echo", method="DELETE", body=b"{}", headers=ui.bearer)
    assert refused.code == 415


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_json_content_type_is_accepted(ui: Ui, method: str) -> None:
    response = await ui.fetch("/api/v1/echo", method=method, body=b"{}", headers={
        "Content-Type": "application/json; charset=utf-8", **ui.bearer})
    assert response.code == 200


async def test_multipart_only_where_the_handler_takes_uploads(ui: Ui) -> None:
    body = b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\nhello\r\n--x--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=x", **ui.bearer}
    upload = await ui.fetch("/api/v1/upload", method="POST", body=body, headers=headers)
    assert upload.code == 200
    assert json.loads(upload.body) == {"bytes": len(body)}
    echo = await ui.fetch("/api/v1/echo", method="POST", body=body, headers=headers)
    assert echo.code == 415


async def test_oversized_body_is_413(ui: Ui) -> None:
    response = await ui.fetch("/api/v1/echo", method="POST",
                              json_body={"x": "y" * (65 * 1024)}, headers=ui.bearer)
    assert response.code == 413
    assert error_of(response) == "body_too_large"


async def test_unauthenticated_refusal_comes_before_content_checks(ui: Ui) -> None:
    response = await ui.fetch("/api/v1/echo", method="POST", body=b"x",
                              headers={"Content-Type": "text/plain"})
    assert response.code == 401
