"""The OpenAPI 3 description of the discovery API, served at /v1/openapi.json.

Kept next to the handlers and checked against the live server by schemathesis in the
test suite, so the document cannot drift from the code unnoticed.
"""

from __future__ import annotations

from typing import Any

from mesh.identity import LAST_RESORT_PREKEY_ID, MAX_ENDPOINT_LEN, MAX_ENDPOINTS, MAX_PREKEY_ID

__all__ = ["openapi_document"]

_B64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_USER_ID = {"type": "string", "pattern": "^[0-9]{15}$", "example": "123456789012345"}


def _key(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "byte", "pattern": _B64, "description": description}


_PREKEY = {
    "type": "object", "additionalProperties": False, "required": ["id", "public_key"],
    "properties": {"id": {"type": "integer", "minimum": 1, "maximum": LAST_RESORT_PREKEY_ID},
                   "public_key": _key("33-byte Curve25519 public key (0x05 prefix)")},
}

_RECORD = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "identity_key", "signed_prekey", "last_resort_prekey", "endpoints",
                 "seq", "updated_at", "signature"],
    "properties": {
        "id": _USER_ID,
        "identity_key": _key("33-byte identity public key"),
        "signed_prekey": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "public_key", "signature"],
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": MAX_PREKEY_ID},
                           "public_key": _key("33-byte public key"),
                           "signature": _key("64-byte XEdDSA signature by the identity key")},
        },
        "last_resort_prekey": {
            "type": "object", "additionalProperties": False, "required": ["id", "public_key"],
            "properties": {"id": {"type": "integer", "enum": [LAST_RESORT_PREKEY_ID]},
                           "public_key": _key("33-byte public key")},
        },
        "endpoints": {"type": "array", "maxItems": MAX_ENDPOINTS,
                      "items": {"type": "string", "maxLength": MAX_ENDPOINT_LEN,
                                "pattern": "^wss?://"}},
        "seq": {"type": "integer", "minimum": 1},
        "updated_at": {"type": "integer", "minimum": 0},
        "signature": _key("64-byte XEdDSA signature over the canonical record encoding"),
    },
}

_DHT_ADDRESS = {
    "type": "object", "nullable": True, "additionalProperties": False,
    "required": ["host", "port"],
    "description": "The server's Kademlia node (UDP), or null when it runs none. An "
                   "unspecified host (0.0.0.0 or ::) means the host this API was reached at.",
    "properties": {"host": {"type": "string", "description": "IP address"},
                   "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
}

_ERROR = {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}

_PREKEYS_LEFT = {
    "type": "object", "required": ["id", "prekeys_left"],
    "properties": {"id": _USER_ID, "prekeys_left": {"type": "integer", "minimum": 0}},
}

_SIGNED_HEADERS = [
    {"name": "Parley-Id", "in": "header", "required": True, "schema": _USER_ID},
    {"name": "Parley-Timestamp", "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"}},
    {"name": "Parley-Nonce", "in": "header", "required": True,
     "schema": {"type": "string", "description": "16 random bytes, base64"}},
    {"name": "Parley-Signature", "in": "header", "required": True,
     "schema": {"type": "string", "description": "64-byte signature, base64"}},
]

_POW_HEADER = {
    "name": "Parley-Pow", "in": "header", "required": False,
    "schema": {"type": "string", "description": "A new identity's proof of work: 1-16 bytes, "
               "base64, such that SHA-256(msgpack([\"parley/pow/v1\", identity_key, "
               "Parley-Timestamp]) || bytes) starts with Parley-Pow-Bits zero bits"}}

_PREKEYS_LEFT_HEADER = {"Parley-Prekeys-Left": {
    "description": "The signer's one-time prekeys left on the server",
    "schema": {"type": "string", "pattern": "^[0-9]+$"}}}

_PATH_ID = {"name": "user_id", "in": "path", "required": True,
            "schema": {"type": "string", "description": "15-digit user id"}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Missing, stale, replayed or bad signature",
            403: "Signed by someone else, or (registration) pow_required: a new identity "
                 "needs a proof of work of Parley-Pow-Bits bits",
            404: "Unknown user", 409: "Conflict", 413: "Body over 64 KiB",
            429: "Rate limited, or (registration) registration_quota (see Retry-After)"}
    out = {str(c): _json(_ERROR, text[c]) for c in codes}
    if 429 in codes:
        out["429"]["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    if 403 in codes:
        out["403"]["headers"] = {"Parley-Pow-Bits": {"schema": {"type": "string"}}}
    return out


_OBSERVED = {"type": "object", "required": ["address", "port"],
             "properties": {"address": {"type": "string",
                                        "description": "IP address the request came from"},
                            "port": {"type": "integer", "minimum": 0, "maximum": 65535}}}
_DIALBACK = {"type": "object", "required": ["address", "port", "reachable", "detail"],
             "properties": {**_OBSERVED["properties"], "reachable": {"type": "boolean"},
                            "detail": {"type": "string", "description": "connected, timeout, "
                                       "refused or the name of the error"}}}


def _with_prekeys_left(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": _PREKEYS_LEFT_HEADER}


def openapi_document() -> dict[str, Any]:
    record_body = {"type": "object", "required": ["record"], "properties": {"record": _RECORD}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Parley bootstrap discovery API", "version": "1",
                 "description": "Signed user records and one-time prekeys. Writes are "
                                "signed; see docs/protocol.md, 'Discovery'. Behind a "
                                "trusted proxy any request may also get 400 "
                                "bad_forwarded_for."},
        "paths": {
            "/v1/health": {"get": {
                "operationId": "health", "summary": "Liveness and the server's DHT address",
                "responses": {"200": _json({
                    "type": "object", "required": ["status", "api", "dht"],
                    "properties": {"status": {"type": "string"}, "api": {"type": "string"},
                                   "dht": _DHT_ADDRESS}}, "OK"),
                    **_errors(429)}}},
            "/v1/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI document"),
                              **_errors(429)}}},
            "/v1/users": {"post": {
                "operationId": "register", "summary": "Register a signed record and prekeys",
                "parameters": [*_SIGNED_HEADERS, _POW_HEADER],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "required": ["record", "one_time_prekeys"],
                    "properties": {"record": _RECORD,
                                   "one_time_prekeys": {"type": "array", "maxItems": 200,
                                                        "items": _PREKEY}}}}}},
                "responses": {
                    "201": _with_prekeys_left(_json(_PREKEYS_LEFT, "Registered")),
                    "200": _with_prekeys_left(_json(_PREKEYS_LEFT, "Re-registered (same key)")),
                    **_errors(400, 401, 403, 409, 413, 429)}}},
            "/v1/users/{user_id}": {
                "parameters": [_PATH_ID],
                "get": {"operationId": "lookup", "summary": "A user's signed record",
                        "responses": {"200": _json(record_body, "The record"),
                                      **_errors(400, 404, 429)}},
                "put": {"operationId": "update",
                        "summary": "Publish a newer record and/or more one-time prekeys",
                        "parameters": _SIGNED_HEADERS,
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"type": "object", "additionalProperties": False,
                                       "minProperties": 1,
                                       "properties": {"record": _RECORD,
                                                      "one_time_prekeys": {
                                                          "type": "array", "maxItems": 200,
                                                          "items": _PREKEY}}}}}},
                        "responses": {"200": _with_prekeys_left(_json(_PREKEYS_LEFT,
                                                                      "Updated")),
                                      **_errors(400, 401, 403, 404, 409, 413, 429)}},
            },
            "/v1/users/{user_id}/bundle": {
                "parameters": [_PATH_ID],
                "post": {"operationId": "claimBundle",
                         "summary": "The record plus one claimed one-time prekey (or the "
                                    "last-resort prekey when none are left)",
                         "parameters": _SIGNED_HEADERS,
                         "responses": {"200": _with_prekeys_left(_json({
                             "type": "object", "required": ["record", "prekey"],
                             "properties": {"record": _RECORD, "prekey": _PREKEY}},
                             "A bundle (one-time prekeys only within the claimer's and "
                             "target's budgets, else the last-resort prekey)")),
                             **_errors(400, 401, 404, 413, 429)}}},
            "/v1/observed": {"get": {
                "operationId": "observed",
                "summary": "The client's address and source port as this server sees them",
                "responses": {"200": _json(_OBSERVED, "Observed address"), **_errors(429)}}},
            "/v1/dialback": {"post": {
                "operationId": "dialback",
                "summary": "Open a TCP connection back to the requesting address on a port "
                           "and say whether it succeeded (reachability check)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "integer", "minimum": 1,
                                            "maximum": 65535}}}}}},
                "responses": {"200": _json(_DIALBACK, "Result of the dial-back"),
                              **_errors(400, 413, 429)}}},
        },
    }
