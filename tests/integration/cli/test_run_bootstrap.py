"""`python run.py [bootstrap]` as a user runs it: a real process on a free port."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_bootstrap_command_serves_health_and_openapi(run_py, tmp_path: Path) -> None:
    db = tmp_path / "boot.db"
    proc = run_py("bootstrap", "--port", "0", "--db", str(db))
    url = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
    assert fetch_json(f"{url}/v1/health")["status"] == "ok"
    assert fetch_json(f"{url}/v1/openapi.json")["openapi"].startswith("3.")
    assert proc.stop(signal.SIGINT) == 0
    assert db.exists()


def test_no_subcommand_means_bootstrap(run_py, tmp_path: Path) -> None:
    proc = run_py("--port", "0", "--db", str(tmp_path / "b.db"))
    url = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
    assert fetch_json(f"{url}/v1/health")["api"] == "v1"
