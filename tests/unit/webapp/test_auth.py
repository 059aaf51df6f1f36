"""Token file and request policy (webapp/auth.py), without a server."""

from __future__ import annotations

import logging
import os
import stat
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.jsonapi import ApiError
from webapp.auth import (
    SESSION_FILE,
    TOKEN_FILE,
    allowed_hosts,
    bearer_token,
    check_content_type,
    check_fetch_site,
    check_host,
    check_origin,
    check_resource_isolation,
    content_security_policy,
    create_ui_token,
    load_session_secret,
    media_type,
    new_token,
    read_ui_token,
    remove_ui_token,
    rotate_session_secret,
    security_headers,
    session_cookie_value,
    tokens_equal,
)
from webapp.errors import UiTokenError

PORT = 8471


def refusal(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value.status_code, info.value.code


# Token file


def test_new_tokens_are_32_random_bytes_urlsafe() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) == 43
        assert set(token) <= set(string.ascii_letters + string.digits + "-_")


def test_create_writes_a_private_file_atomically(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = create_ui_token(data_dir)
    path = data_dir / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert path.read_text() == token + "\n"
    assert read_ui_token(data_dir) == token
    assert os.listdir(data_dir) == [TOKEN_FILE]


def test_every_start_makes_a_new_token(tmp_path: Path) -> None:
    first = create_ui_token(tmp_path)
    (tmp_path / TOKEN_FILE).chmod(0o644)  # even a file someone loosened
    second = create_ui_token(tmp_path)
    assert first != second
    assert read_ui_token(tmp_path) == second
    assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600


def test_read_refuses_missing_or_garbage(tmp_path: Path) -> None:
    with pytest.raises(UiTokenError, match="is the node running"):
        read_ui_token(tmp_path)
    for content in ("", "short", "x" * 43 + "!", "é" * 43):
        (tmp_path / TOKEN_FILE).write_text(content)
        with pytest.raises(UiTokenError):
            read_ui_token(tmp_path)
    (tmp_path / TOKEN_FILE).write_bytes(b"\xff" * 43)
    with pytest.raises(UiTokenError):
        read_ui_token(tmp_path)


def test_remove_only_deletes_our_own_token(tmp_path: Path) -> None:
    token = create_ui_token(tmp_path)
    remove_ui_token(tmp_path, new_token())  # another run's token: leave the file
    assert read_ui_token(tmp_path) == token
    remove_ui_token(tmp_path, token)
    assert not (tmp_path / TOKEN_FILE).exists()
    remove_ui_token(tmp_path, token)  # already gone: fine


# Session secret (browser cookies that outlive a restart)


def test_the_session_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secret = load_session_secret(data_dir)
    path = data_dir / SESSION_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == secret + "\n" and len(secret) == 43
    assert load_session_secret(data_dir) == secret  # the next start: the same
    assert os.listdir(data_dir) == [SESSION_FILE]   # no temp files left


def test_rotation_replaces_the_secret(tmp_path: Path) -> None:
    first = load_session_secret(tmp_path)
    second = rotate_session_secret(tmp_path)
    assert second != first and load_session_secret(tmp_path) == second


@pytest.mark.parametrize("content", [b"", b"short\n", b"x" * 43 + b"!", b"\xff" * 43])
def test_a_damaged_secret_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                      content: bytes) -> None:
    (tmp_path / SESSION_FILE).write_bytes(content)
    (tmp_path / SESSION_FILE).chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="parley.webapp"):
        secret = load_session_secret(tmp_path)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "browsers must sign in again" in caplog.text
    assert (tmp_path / SESSION_FILE).read_text() == secret + "\n"


def test_a_secret_others_could_read_is_replaced(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    old = load_session_secret(tmp_path)
    (tmp_path / SESSION_FILE).chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="parley.webapp"):
        new = load_session_secret(tmp_path)
    assert new != old and "readable by others" in caplog.text
    assert old not in caplog.text and new not in caplog.text  # secrets are never logged
    assert stat.S_IMODE((tmp_path / SESSION_FILE).stat().st_mode) == 0o600


def test_the_cookie_is_derived_from_the_secret() -> None:
    secret = new_token()
    cookie = session_cookie_value(secret)
    assert cookie == session_cookie_value(secret) and cookie != secret
    assert len(cookie) == 43 and set(cookie) <= set(string.ascii_letters + string.digits + "-_")
    assert session_cookie_value(new_token()) != cookie


def test_tokens_equal() -> None:
    token = new_token()
    assert tokens_equal(token, token)
    assert not tokens_equal(None, token)
    assert not tokens_equal("", token)
    assert not tokens_equal(token[:-1], token)
    assert not tokens_equal(token + "x", token)
    assert not tokens_equal("\udcff\u00e9", token)  # odd header bytes do not raise


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
    ("Bearer", None), ("Bearer ", None), ("Basic abc", None), ("", None), ("abc", None),
])
def test_bearer_token(header: str, expected: str | None) -> None:
    assert bearer_token(header) == expected


@given(st.text())
def test_bearer_token_never_raises(header: str) -> None:
    result = bearer_token(header)
    assert result is None or (result and result == result.strip())


# Host and Origin


def test_allowed_hosts() -> None:
    assert allowed_hosts(PORT) == {f"127.0.0.1:{PORT}", f"localhost:{PORT}"}


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}",
                                  f"LOCALHOST:{PORT}", f" 127.0.0.1:{PORT} "])
def test_own_hosts_pass(host: str) -> None:
    assert check_host(host, PORT) in allowed_hosts(PORT)


@pytest.mark.parametrize("host", [
    None, "", "127.0.0.1", "localhost", f"evil.example:{PORT}", f"127.0.0.1:{PORT + 1}",
    f"[::1]:{PORT}", f"127.0.0.2:{PORT}", f"127.0.0.1:{PORT},evil.example",
    f"localhost.:{PORT}", f"user@127.0.0.1:{PORT}", f"127.0.0.1:0{PORT}",
])
def test_other_hosts_are_refused(host: str | None) -> None:
    assert refusal(check_host, host, PORT) == (403, "bad_host")


@given(st.text(max_size=40))
def test_only_exact_hosts_pass(host: str) -> None:
    try:
        normal = check_host(host, PORT)
    except ApiError as exc:
        assert exc.code == "bad_host"
    else:
        assert normal in allowed_hosts(PORT)
        assert host.strip().lower() == normal


def test_origin_must_be_exactly_ours() -> None:
    host = f"127.0.0.1:{PORT}"
    check_origin(None, host)
    check_origin(f"http://{host}", host)
    for origin in ("null", "", f"https://{host}", f"http://{host}/", f"http://localhost:{PORT}",
                   f"HTTP://{host}", "http://evil.example", f"http://{host}.evil.example"):
        assert refusal(check_origin, origin, host) == (403, "forbidden_origin"), origin


@pytest.mark.parametrize("value", [None, "same-origin", "none", "Same-Origin"])
def test_fetch_site_allowed(value: str | None) -> None:
    check_fetch_site(value)


@pytest.mark.parametrize("value", ["cross-site", "same-site", "", "garbage"])
def test_fetch_site_refused(value: str) -> None:
    assert refusal(check_fetch_site, value) == (403, "forbidden_origin")


@pytest.mark.parametrize(("site", "mode"), [
    (None, None), ("same-origin", "no-cors"), ("none", "navigate"), ("cross-site", "navigate"),
    ("same-site", "navigate"), ("same-origin", "cors"),
])
def test_resource_isolation_allows(site: str | None, mode: str | None) -> None:
    check_resource_isolation(site, mode)


@pytest.mark.parametrize(("site", "mode"), [
    ("cross-site", "no-cors"), ("cross-site", None), ("same-site", "cors"),
    ("same-site", "nested-navigate"), ("Cross-Site", "websocket"),
])
def test_resource_isolation_refuses(site: str, mode: str | None) -> None:
    assert refusal(check_resource_isolation, site, mode) == (403, "forbidden_origin")


# Content types


@pytest.mark.parametrize(("value", "expected"), [
    ("application/json", "application/json"),
    ("Application/JSON; charset=utf-8", "application/json"),
    (None, ""), ("", ""), ("multipart/form-data; boundary=x", "multipart/form-data"),
])
def test_media_type(value: str | None, expected: str) -> None:
    assert media_type(value) == expected


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_need_no_content_type(method: str) -> None:
    check_content_type(method, None)
    check_content_type(method, "text/plain")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "post"])
def test_unsafe_methods_need_json(method: str) -> None:
    check_content_type(method, "application/json")
    for bad in (None, "text/plain", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x", "application/json-patch+json"):
        assert refusal(check_content_type, method, bad) == (415, "unsupported_media_type")
    check_content_type(method, "multipart/form-data; boundary=x", accept_multipart=True)
    assert refusal(check_content_type, method, "text/plain", accept_multipart=True)[0] == 415


def test_a_bodiless_delete_needs_no_content_type() -> None:
    """Issue 15 finding 8: ``curl -X DELETE -H "Authorization: Bearer ..."`` got 415."""
    check_content_type("DELETE", None, has_body=False)
    assert refusal(check_content_type, "DELETE", None)[0] == 415          # a body: typed
    assert refusal(check_content_type, "DELETE", "text/plain", has_body=False)[0] == 415
    for method in ("POST", "PUT", "PATCH"):
        assert refusal(check_content_type, method, None, has_body=False)[0] == 415


# Response headers


def test_csp() -> None:
    policy = content_security_policy(f"localhost:{PORT}")
    assert policy == (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' blob: data:; media-src 'self' blob:; "
        f"connect-src 'self' ws://localhost:{PORT}; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'")


def test_security_headers_never_reflect_a_foreign_host() -> None:
    for host in (None, "evil.example", "evil; script-src *"):
        headers = security_headers(host, PORT)
        assert f"ws://127.0.0.1:{PORT}" in headers["Content-Security-Policy"]
        assert "evil" not in headers["Content-Security-Policy"]
    assert f"ws://localhost:{PORT}" in security_headers(f"LocalHost:{PORT}", PORT)[
        "Content-Security-Policy"]
    assert security_headers(None, PORT)["X-Frame-Options"] == "DENY"
