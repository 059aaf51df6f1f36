"""`python run.py [bootstrap]` as a user runs it: a real process on a free port."""

from __future__ import annotations

import json
import signal
import stat
import urllib.request
from pathlib import Path


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_bootstrap_command_serves_health_and_openapi(run_py, tmp_path: Path) -> None:
    db = tmp_path / "boot.db"
    proc = run_py("bootstrap", "--port", "0", "--dht-port", "0", "--db", str(db))
    url = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
    assert fetch_json(f"{url}/v1/health")["status"] == "ok"
    assert fetch_json(f"{url}/v1/openapi.json")["openapi"].startswith("3.")
    assert proc.stop(signal.SIGINT) == 0
    assert db.exists()


def test_no_subcommand_runs_a_node_with_an_embedded_bootstrap(run_py, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = run_py("--data-dir", str(data), "--ui-port", "0", "--mesh-port", "0",
                  "--bootstrap-port", "0")
    boot = proc.wait_for(r"bootstrap listening on (http://127\.0\.0\.1:\d+)").group(1)
    assert fetch_json(f"{boot}/v1/health")["api"] == "v1"
    match = proc.wait_for(r"Parley node ([0-9 ]{19}): open (http://127\.0\.0\.1:\d+)/#token=(\S+)")
    ui, token = match.group(2), match.group(3)
    request = urllib.request.Request(f"{ui}/api/v1/me",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        me = json.loads(response.read())
    assert me["display_id"] == match.group(1)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "ui-token").stat().st_mode) == 0o600
    assert (data / "ui-token").read_text().strip() == token
