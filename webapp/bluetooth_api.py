"""``/api/v1/bluetooth``: Bluetooth meetups in the node API (docs/api.md).

GET shows whether Bluetooth can run here and is on, the Parley peers met or seen
nearby, and when each group last synced over Bluetooth; POST is the settings switch
(``enabled``) and the attachment limit (``attachments``: "all", "none" or MiB).
The node's side of it is groups/meetups.py.
"""

from __future__ import annotations

from typing import Any

from mesh.jsonapi import ApiError, check_fields
from webapp.node_handler import NodeHandler
from webapp.server import API_PREFIX

__all__ = ["BLUETOOTH_PATH", "BluetoothHandler", "bluetooth_routes"]

BLUETOOTH_PATH = API_PREFIX + "/bluetooth"
MiB = 1024 * 1024
MAX_LIMIT_MIB = 1024


def _limit(value: Any) -> int | None:
    """"all" -> None, "none" -> 0, a number of MiB -> bytes."""
    if value == "all":
        return None
    if value == "none":
        return 0
    if type(value) in (int, float) and 0 <= value <= MAX_LIMIT_MIB:
        return int(value * MiB)
    raise ApiError(400, "bad_attachments",
                   f'attachments is "all", "none" or a size in MiB (0 to {MAX_LIMIT_MIB})')


class BluetoothHandler(NodeHandler):
    body_limit = 1024

    def get(self) -> None:
        self.send_json(200, self.node.bluetooth())

    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, (), {"enabled", "attachments"})
        if not body:
            raise ApiError(400, "bad_request", "give enabled and/or attachments")
        enabled = body.get("enabled")
        if "enabled" in body and type(enabled) is not bool:
            raise ApiError(400, "bad_request", "enabled must be true or false")
        if "attachments" in body:
            self.node.set_bluetooth_attachments(_limit(body["attachments"]))
        if enabled is not None:
            await self.node.set_bluetooth_enabled(enabled)
        self.send_json(200, self.node.bluetooth())


def bluetooth_routes() -> list[tuple[str, type[NodeHandler]]]:
    return [(BLUETOOTH_PATH, BluetoothHandler)]
