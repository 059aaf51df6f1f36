"""UiContext: validation, credentials, and no secrets in reprs."""

from __future__ import annotations

import pytest

from webapp.auth import new_token
from webapp.context import UiContext


def make(**kwargs) -> UiContext:
    kwargs.setdefault("token", new_token())
    kwargs.setdefault("port", 8471)
    return UiContext(**kwargs)


def test_repr_hides_secrets() -> None:
    ctx = make()
    assert ctx.token not in repr(ctx) and ctx.session not in repr(ctx)
    assert "8471" in repr(ctx)


def test_session_is_a_separate_secret() -> None:
    ctx = make()
    assert ctx.session != ctx.token and len(ctx.session) == 43
    assert make().session != ctx.session


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_must_be_bound(port: int) -> None:
    with pytest.raises(ValueError):
        make(port=port)


@pytest.mark.parametrize("token", ["", "short", "x" * 31, "x" * 40 + "!!!"])
def test_weak_or_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        make(token=token)


def test_session_equal_to_token_is_refused() -> None:
    token = new_token()
    with pytest.raises(ValueError):
        make(token=token, session=token)


def test_authenticated() -> None:
    ctx = make()
    assert ctx.authenticated(f"Bearer {ctx.token}", None)
    assert ctx.authenticated(None, ctx.session)
    assert not ctx.authenticated(None, None)
    assert not ctx.authenticated(None, ctx.token)  # the token is not a cookie value
    assert not ctx.authenticated(f"Bearer {ctx.session}", None)  # nor the cookie a bearer
    assert not ctx.authenticated("Bearer wrong", ctx.session)  # a present header decides
    assert not ctx.authenticated("", ctx.session)


def test_names() -> None:
    ctx = make(port=1234)
    assert ctx.cookie_name == "parley_session_1234"
    assert ctx.origin == "http://127.0.0.1:1234"
