"""NodeHandler: the base of every handler that calls the node, and the one place where
the lower layers' typed errors become HTTP answers.

Each handler gets the node's NodeApi through ``initialize(ctx, node)`` (see
webapp/api.py's ``api_routes``); a groups or mesh error raised by a handler method is
answered as JSON with its status and reason, and refusals are not logged as faults.
"""

from __future__ import annotations

from typing import Any

from groups.errors import (
    GroupsError,
    IdentityChanged,
    InviteError,
    NoSession,
    NotFound,
    PermissionDenied,
)
from groups.node_api import NodeApi
from mesh.errors import (
    DhtError,
    DiscoveryRefused,
    DiscoveryUnavailable,
    FormatError,
    MeshError,
    RecordError,
    RecordNotFound,
)
from mesh.jsonapi import ApiError, check_fields
from webapp.context import UiContext
from webapp.server import UiApiHandler

__all__ = ["NodeHandler", "to_api_error"]

_STATUS_OF_REASON = {"text_too_long": 413, "empty_message": 400, "bad_name": 400,
                     "bad_emoji": 400, "bad_timer": 400,
                     "invite_malformed": 400, "file_too_large": 413, "empty_file": 400,
                     "bad_file_name": 400, "bad_nickname": 400, "bad_avatar": 400,
                     "avatar_too_large": 413}


def to_api_error(exc: Exception) -> ApiError:
    """One place where the lower layers' typed errors become HTTP answers."""
    reason = getattr(exc, "reason", "error")
    if isinstance(exc, NotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, IdentityChanged):
        return ApiError(409, "identity_changed",
                        f"the safety number of {exc.user_id} changed; compare it before "
                        "you continue")
    if isinstance(exc, NoSession):
        return ApiError(409, "no_session", str(exc))
    if isinstance(exc, PermissionDenied | InviteError):
        return ApiError(_STATUS_OF_REASON.get(reason, 403), reason, str(exc))
    if isinstance(exc, DiscoveryRefused):
        status = 404 if exc.status == 404 else 502
        return ApiError(status, "unknown_user" if status == 404 else reason, str(exc))
    if isinstance(exc, RecordNotFound):
        return ApiError(404, "unknown_user", "no user with this id could be found")
    if isinstance(exc, DiscoveryUnavailable | DhtError):
        return ApiError(503, "discovery_unavailable",
                        "the bootstrap server (and the DHT) could not be reached")
    if isinstance(exc, RecordError):
        return ApiError(502, reason, f"a server sent a record that does not verify: {exc}")
    if isinstance(exc, FormatError):
        return ApiError(400, "bad_request", str(exc))
    return ApiError(500, "internal_error", "unexpected error")


class NodeHandler(UiApiHandler):
    """Maps the groups/mesh errors raised by a handler method to JSON answers."""

    # A 64 KiB text may grow sixfold as JSON (\u escapes of 6 bytes): room for it, so the
    # messenger, not the transport, tells the user what the limit is.
    body_limit = 512 * 1024

    def initialize(self, ctx: UiContext, node: NodeApi) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.node = node

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, GroupsError | MeshError) and to_api_error(value).status_code < 500:
            return  # a refusal, answered with its reason
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GroupsError | MeshError):
            mapped = to_api_error(exc)
            self.set_status(mapped.status_code)
            kwargs["exc_info"] = (ApiError, mapped, None)
            status_code = mapped.status_code
        super().write_error(status_code, **kwargs)

    def text_field(self) -> str:
        body = self.json_body()
        check_fields(body, {"text"}, {"reply_to"})
        if not isinstance(body["text"], str):
            raise ApiError(400, "bad_request", "text must be a string")
        return body["text"]
