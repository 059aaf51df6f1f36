"""Who may talk to the node's UI server: the UI token and the request policy (DESIGN §8).

The UI server listens on 127.0.0.1 only, but loopback is not a trust boundary: every
web page the user visits can make the browser send requests to 127.0.0.1, and a DNS
rebinding attack can make a hostile name resolve there. So, for every request:

- the Host header must name us (``127.0.0.1:PORT`` or ``localhost:PORT``): a rebound
  name carries the attacker's host name and is refused (403 ``bad_host``);
- an Origin header, when present, must be exactly our own origin (403
  ``forbidden_origin``), and API requests that a browser marks ``Sec-Fetch-Site:
  cross-site`` / ``same-site`` are refused too (another port on 127.0.0.1 is
  "same-site", and SameSite cookies do not stop it);
- the caller proves it holds the token: ``Authorization: Bearer <token>`` (scripts) or
  the session cookie the browser got in exchange for it;
- state-changing requests must say ``Content-Type: application/json`` (or
  ``multipart/form-data`` where a handler takes uploads), which no cross-site HTML
  form can send without a CORS preflight that we never answer.

The token is new at every start; the browser's cookie is derived from a session secret
kept in ``<data-dir>/ui-session`` (0600), so an open tab survives a restart of its node
and "sign out everywhere" (a new secret) ends every browser's session at once.

Everything here is plain functions over header strings, so it is unit-tested without
a server; the Tornado handlers in webapp/context.py apply it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

from mesh.jsonapi import ApiError
from webapp.errors import UiTokenError

__all__ = [
    "SESSION_FILE",
    "TOKEN_BYTES",
    "TOKEN_FILE",
    "allowed_hosts",
    "bearer_token",
    "check_content_type",
    "check_fetch_site",
    "check_host",
    "check_origin",
    "check_resource_isolation",
    "content_security_policy",
    "cookie_name",
    "create_ui_token",
    "load_session_secret",
    "media_type",
    "new_token",
    "read_ui_token",
    "remove_ui_token",
    "rotate_session_secret",
    "security_headers",
    "session_cookie_value",
    "tokens_equal",
]

log = logging.getLogger("parley.webapp")

TOKEN_FILE = "ui-token"  # noqa: S105 (a file name, not a secret)
SESSION_FILE = "ui-session"
_COOKIE_CONTEXT = b"parley ui session cookie v1"
TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, urlsafe base64, no padding
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"



# Tokens


def new_token() -> str:
    """A fresh secret: 32 random bytes as unpadded urlsafe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def create_ui_token(data_dir: str | os.PathLike[str]) -> str:
    """Make a new token and write it to ``<data_dir>/ui-token`` (mode 0600), atomically.

    A new token on every start means a token that leaked (shell history, a screenshot
    of the printed URL) stops working at the next restart.
    """
    token = new_token()
    _write_private(Path(data_dir), TOKEN_FILE, token)
    return token


def load_session_secret(data_dir: str | os.PathLike[str]) -> str:
    """The secret the browsers' session cookies derive from, kept across restarts in
    ``<data_dir>/ui-session`` (0600); made on first use.

    A file that does not hold a secret, or that others may read (the secret may have
    leaked), is replaced by a new secret: the cost is only that browsers sign in again.
    """
    path = Path(data_dir) / SESSION_FILE
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return rotate_session_secret(data_dir)
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s): browsers must sign in again", path, exc)
        return rotate_session_secret(data_dir)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): made a new session secret, "
                    "browsers must sign in again", path, mode)
        return rotate_session_secret(data_dir)
    if not _TOKEN_RE.fullmatch(text):
        log.warning("%s holds no session secret: made a new one, browsers must sign in "
                    "again", path)
        return rotate_session_secret(data_dir)
    return text


def rotate_session_secret(data_dir: str | os.PathLike[str]) -> str:
    """Write a new session secret (0600, atomically): every cookie made from the old one
    stops working, in this run and after restarts ("sign out everywhere")."""
    secret = new_token()
    _write_private(Path(data_dir), SESSION_FILE, secret)
    return secret


def session_cookie_value(secret: str) -> str:
    """The cookie value for a session secret: HMAC-SHA256 under a fixed context, so the
    cookie jar (which browsers may save to disk) never holds the secret of the data dir
    itself and the file's content is not a cookie either."""
    digest = hmac.new(secret.encode("ascii"), _COOKIE_CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _write_private(directory: Path, name: str, text: str) -> None:
    """Write ``directory/name`` readable by us only, atomically: a private temporary file
    in the same directory, fsynced, renamed over the old file, the directory fsynced. A
    reader never sees half a secret and others never see it, not even briefly."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def read_ui_token(data_dir: str | os.PathLike[str]) -> str:
    """The token of the node running on ``data_dir`` (for scripts and tests)."""
    path = Path(data_dir) / TOKEN_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise UiTokenError(f"{path} does not exist: is the node running?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UiTokenError(f"cannot read {path}: {exc}") from None
    if not _TOKEN_RE.fullmatch(text):
        raise UiTokenError(f"{path} does not hold a UI token")
    return text


def remove_ui_token(data_dir: str | os.PathLike[str], token: str) -> None:
    """Delete the token file if it still holds ``token`` (clean shutdown)."""
    path = Path(data_dir) / TOKEN_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if tokens_equal(path.read_text(encoding="ascii").strip(), token):
            path.unlink()


def tokens_equal(given: str | None, expected: str) -> bool:
    """Constant-time comparison (the time taken does not reveal a matching prefix)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def bearer_token(authorization: str) -> str | None:
    """The credential of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def cookie_name(port: int) -> str:
    """Cookies are not port-scoped: two nodes on one machine need different names."""
    return f"parley_session_{port}"


# Host, Origin, Sec-Fetch-Site, Content-Type


def allowed_hosts(port: int) -> frozenset[str]:
    """The Host header values that name us. We bind 127.0.0.1 only, so no [::1]."""
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}"})


def check_host(host: str | None, port: int) -> str:
    """Return the normalised Host (lower case) or refuse it (DNS rebinding)."""
    normal = (host or "").strip().lower()
    if normal not in allowed_hosts(port):
        raise ApiError(403, "bad_host",
                       f"Host must be 127.0.0.1:{port} or localhost:{port}")
    return normal


def check_origin(origin: str | None, host: str) -> None:
    """An Origin header, when sent, must be exactly ours (``http://`` + our Host).

    Requests without one (scripts; browsers' same-origin GETs) pass: a browser always
    sends Origin on cross-origin fetches, WebSocket handshakes and form POSTs.
    """
    if origin is not None and origin != f"http://{host}":
        raise ApiError(403, "forbidden_origin", "requests from other origins are refused")


def check_fetch_site(sec_fetch_site: str | None) -> None:
    """Refuse what the browser itself labels as coming from another origin."""
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() not in (
            "same-origin", "none"):
        raise ApiError(403, "forbidden_origin", "requests from other origins are refused")


def check_resource_isolation(sec_fetch_site: str | None, sec_fetch_mode: str | None) -> None:
    """Pages may be opened from anywhere (the locked page is all a stranger gets), but
    another site may not embed or load our files as subresources."""
    site = (sec_fetch_site or "").strip().lower()
    if site in ("cross-site", "same-site") and \
            (sec_fetch_mode or "").strip().lower() != "navigate":
        raise ApiError(403, "forbidden_origin", "other sites may not load these files")


def media_type(content_type: str | None) -> str:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(method: str, content_type: str | None, *,
                       accept_multipart: bool = False, has_body: bool = True) -> None:
    """State-changing requests must carry a type no cross-site form can send blindly.

    A DELETE with no body and no Content-Type passes (``curl -X DELETE`` with a bearer
    token): no form can send DELETE, and a cross-site script can send it only after a
    CORS preflight, which this server never grants."""
    if method.upper() not in UNSAFE_METHODS:
        return
    if method.upper() == "DELETE" and content_type is None and not has_body:
        return
    kind = media_type(content_type)
    if kind == JSON_TYPE or (accept_multipart and kind == MULTIPART_TYPE):
        return
    expected = JSON_TYPE + (f" or {MULTIPART_TYPE}" if accept_multipart else "")
    raise ApiError(415, "unsupported_media_type", f"Content-Type must be {expected}")


# Response headers


def content_security_policy(host: str) -> str:
    """Own origin only: no inline script or style, no eval, no framing, no plugins.

    ``connect-src`` names the WebSocket origin explicitly because older browsers do
    not let ``'self'`` match ws: URLs.
    """
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        f"connect-src 'self' ws://{host}",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ])


def security_headers(host: str | None, port: int) -> dict[str, str]:
    """Headers for every response. ``host`` is the request's Host if it names us."""
    normal = (host or "").strip().lower()
    if normal not in allowed_hosts(port):
        normal = f"127.0.0.1:{port}"
    return {
        "Content-Security-Policy": content_security_policy(normal),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
