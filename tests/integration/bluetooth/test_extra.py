"""The optional extra: PyBluez imports where it is installed (CI installs it), and a
node asked for Bluetooth on a machine without an adapter says so in one line and
keeps serving its API."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from mesh.bluetooth import SERVICE_UUID, probe
from tests.integration.messenger.conftest import NodeProc


def test_the_extra_imports() -> None:
    try:
        bluetooth = importlib.import_module("bluetooth")
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("`make test` installs the Bluetooth extra where libbluetooth-dev is "
                        "installed (CI does), yet `import bluetooth` fails")
        pytest.skip("the Bluetooth extra is not installed here (`make bluetooth`)")
    for name in ("BluetoothSocket", "RFCOMM", "PORT_ANY", "advertise_service", "find_service",
                 "discover_devices", "SERIAL_PORT_CLASS", "SERIAL_PORT_PROFILE"):
        assert hasattr(bluetooth, name), name
    assert bluetooth.is_valid_uuid(SERVICE_UUID)


def test_a_node_without_an_adapter_runs_on(tmp_path: Path) -> None:
    availability = probe()
    if availability.available:
        pytest.skip("this machine has a Bluetooth adapter")
    node = NodeProc("lone", tmp_path / "lone", "", extra=("--bluetooth", "--no-dht"))
    try:
        node.start(ready="")
        said = [line for line in node.proc.lines if "Bluetooth" in line] if node.proc else []
        assert len(said) == 1, said
        assert "Bluetooth meetups are off" in said[0] and "runs without them" in said[0]
        if availability.reason == "not_installed":
            assert "make bluetooth" in said[0]
        assert not any("Traceback" in line for line in node.proc.lines)  # type: ignore[union-attr]
        shown = node.ok("GET", "/api/v1/bluetooth")
        assert shown["available"] is False and shown["enabled"] is True
        assert shown["running"] is False and shown["reason"] == availability.reason
        assert shown["nearby"] == [] and shown["groups"] == {}
        assert node.ok("GET", "/api/v1/me")["id"] == node.user_id
        group = node.create_group("still works")
        assert node.send(group, "hello") and node.texts(group) == ["hello"]
    finally:
        node.stop()
