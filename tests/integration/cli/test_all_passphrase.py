"""`run.py all` checks the identity key's passphrase before it starts anything: with a
wrong one it used to start its embedded bootstrap first, which created bootstrap.db."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mesh.identity import display_user_id, load_or_create_identity
from tests.conftest import ROOT
from tests.integration.cli.test_passphrase import snapshot


def test_a_wrong_passphrase_starts_no_bootstrap_and_creates_nothing(tmp_path: Path) -> None:
    data, bad = tmp_path / "data", tmp_path / "bad"
    load_or_create_identity(data, b"correct horse battery staple")
    bad.write_text("wrong horse\n")
    before = snapshot(data)
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "all", "--data-dir", str(data),
         "--passphrase-file", str(bad), "--bootstrap-port", "0", "--ui-port", "0",
         "--mesh-port", "0", "--mesh-host", "127.0.0.1", "--no-lan-discovery",
         "--no-port-mapping"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 2
    assert done.stdout == ""  # no "Parley bootstrap listening on ..."
    assert done.stderr == f"run.py all: wrong passphrase for {data / 'identity.key'}\n"
    assert snapshot(data) == before
    assert sorted(p.name for p in data.iterdir()) == ["identity.key"]


def test_the_right_passphrase_starts_the_node_with_that_key(run_py, tmp_path: Path) -> None:
    data, good = tmp_path / "data", tmp_path / "good"
    identity = load_or_create_identity(data, b"s3cret")
    good.write_text("s3cret\n")
    proc = run_py("all", "--data-dir", str(data), "--passphrase-file", str(good),
                  "--bootstrap-port", "0", "--ui-port", "0", "--mesh-port", "0",
                  "--mesh-host", "127.0.0.1", "--no-lan-discovery", "--no-port-mapping")
    shown = proc.wait_for(r"Parley node ([0-9 ]{19}): open").group(1)
    assert proc.stop() == 0
    assert shown == display_user_id(identity.user_id)
