"""POST/GET /api/v1/passphrase on a real node and UI server: what the first-run screen
uses to protect the identity key (docs/api.md, docs/protocol.md "Keys at rest")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from groups.node import NodeConfig
from mesh.errors import PassphraseError
from mesh.identity import load_or_create_identity
from webapp.app import App


@pytest.fixture
async def app(tmp_path: Path):
    config = NodeConfig(data_dir=tmp_path / "n", bootstrap="", dht_port=None, mesh_port=None,
                        lan_discovery=False, port_mapping=False)
    app = await App.start(config)
    try:
        yield app
    finally:
        await app.stop()


async def call(app: App, method: str, body: object | None = None) -> HTTPResponse:
    token = (Path(app.node.data_dir) / "ui-token").read_text().strip()
    return await AsyncHTTPClient().fetch(
        app.ui_url.split("/#")[0] + "/api/v1/passphrase", method=method, raise_error=False,
        body=None if body is None else json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


async def test_set_change_and_refuse(app) -> None:
    key_file = Path(app.node.data_dir) / "identity.key"
    assert json.loads((await call(app, "GET")).body) == {"protected": False}
    for bad in ({"passphrase": ""}, {"passphrase": 5}, {"passphrase": "x" * 1025},
                {"passphrase": "a", "current": 1}, {"passphrase": "a", "other": 1}):
        response = await call(app, "POST", bad)
        assert response.code == 400, bad
    assert json.loads((await call(app, "GET")).body) == {"protected": False}

    response = await call(app, "POST", {"passphrase": "first one"})
    assert (response.code, json.loads(response.body)) == (200, {"protected": True})
    protected = key_file.read_bytes()
    for wrong in ({"passphrase": "second"}, {"passphrase": "second", "current": "nope"}):
        response = await call(app, "POST", wrong)
        assert (response.code, json.loads(response.body)["error"]) == (403, "wrong_passphrase")
    assert key_file.read_bytes() == protected  # refused: nothing changed

    response = await call(app, "POST", {"passphrase": "second", "current": "first one"})
    assert response.code == 200
    with pytest.raises(PassphraseError):
        load_or_create_identity(Path(app.node.data_dir), b"first one")
    assert load_or_create_identity(Path(app.node.data_dir), b"second") == app.node.identity
