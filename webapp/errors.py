"""The webapp package's error tree (every error class of webapp/ lives here).

    WebappError
    ├── UiTokenError      the ui-token file is missing, unreadable or holds no token
    └── MultipartError    an upload body that is not well-formed multipart/form-data

What the API answers is a different thing: mesh.jsonapi.ApiError is an HTTP answer
(status, code, message), and webapp/node_handler.py turns the groups and mesh error
trees into ApiErrors.
"""

from __future__ import annotations

__all__ = ["MultipartError", "UiTokenError", "WebappError"]


class WebappError(Exception):
    """Base of every error the webapp package raises on purpose."""


class UiTokenError(WebappError):
    """The ui-token file is missing, unreadable or does not hold a token."""


class MultipartError(WebappError):
    """The body is not well-formed multipart/form-data (or was cut short)."""
