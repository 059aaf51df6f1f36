"""schemathesis against a live bootstrap process: no 5xx, responses match the document.

Run through schemathesis' CLI (its pytest plugin does not support pytest 9 yet). The
one check left out is "positive data acceptance": a schema-valid request to a signed
endpoint is still refused without a valid signature, which a fuzzer cannot make.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Proc

ST = Path(sys.executable).with_name("st")


def test_schemathesis_finds_no_server_errors(run_py, tmp_path: Path) -> None:
    proc: Proc = run_py("bootstrap", "--port", "0", "--no-dht", "--db", str(tmp_path / "b.db"),
                        "--rate", "100000", "--burst", "100000", "--log-level", "ERROR")
    url = proc.wait_for(r"listening on (http://\S+)").group(1)
    result = subprocess.run(
        [str(ST), "run", f"{url}/v1/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "40",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "generated" in result.stdout and " passed" in result.stdout
    assert proc.popen.poll() is None, "the server died under fuzzing"
    assert proc.stop() == 0
