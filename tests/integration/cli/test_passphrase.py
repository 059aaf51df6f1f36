"""Keys at rest through `run.py node --passphrase-file` (issue 15): the identity key is
stored wrapped; a wrong or missing passphrase is one line, exit code 2, and changes
nothing in the data directory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import msgpack

from tests.conftest import ROOT

NODE = ("node", "--ui-port", "0", "--no-mesh", "--no-dht", "--bootstrap", "",
        "--no-lan-discovery", "--no-port-mapping")


def snapshot(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}


def run_node(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *NODE, "--data-dir",
                           str(data), *extra], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


def test_a_protected_key_needs_its_passphrase(run_py, tmp_path: Path) -> None:
    data, good, bad = tmp_path / "data", tmp_path / "good", tmp_path / "bad"
    good.write_text("correct horse battery staple\n")
    bad.write_text("wrong horse\n")
    proc = run_py(*NODE, "--data-dir", str(data), "--passphrase-file", str(good))
    user = proc.wait_for(r"Parley node ([0-9 ]{19}): open").group(1)
    assert proc.stop() == 0
    stored = msgpack.unpackb((data / "identity.key").read_bytes())
    assert stored["v"] == 2 and "private" not in stored and stored["kdf"] == "argon2id13"
    before = snapshot(data)

    wrong = run_node(data, "--passphrase-file", str(bad))
    assert wrong.returncode == 2
    assert wrong.stderr == f"run.py node: wrong passphrase for {data / 'identity.key'}\n"
    missing = run_node(data)  # stdin is not a terminal: no prompt
    assert missing.returncode == 2
    assert "is protected by a passphrase; give it with --passphrase-file" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    assert snapshot(data) == before

    again = run_py(*NODE, "--data-dir", str(data), "--passphrase-file", str(good))
    assert again.wait_for(r"Parley node ([0-9 ]{19}): open").group(1) == user
    assert again.stop() == 0


def test_an_unprotected_key_gets_protected(run_py, tmp_path: Path) -> None:
    data, phrase = tmp_path / "data", tmp_path / "phrase"
    phrase.write_text("s3cret")
    first = run_py(*NODE, "--data-dir", str(data))
    user = first.wait_for(r"Parley node ([0-9 ]{19}): open").group(1)
    assert first.stop() == 0
    assert msgpack.unpackb((data / "identity.key").read_bytes())["v"] == 1
    second = run_py(*NODE, "--data-dir", str(data), "--passphrase-file", str(phrase))
    assert second.wait_for(r"Parley node ([0-9 ]{19}): open").group(1) == user
    assert second.stop() == 0
    assert msgpack.unpackb((data / "identity.key").read_bytes())["v"] == 2
    assert run_node(data).returncode == 2
