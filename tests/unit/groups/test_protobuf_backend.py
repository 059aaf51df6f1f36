"""groups.crypto picks protobuf's pure-Python backend, or fails loudly if it cannot."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.unit.groups.helpers import ROOT


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_crypto_selects_the_python_backend() -> None:
    proc = run("import groups.crypto\n"
               "from google.protobuf.internal import api_implementation as a\n"
               "print(a.Type())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python"


def test_native_backend_loaded_first_is_refused() -> None:
    proc = run("from google.protobuf.internal import api_implementation as a\n"
               "assert a.Type() != 'python'\n"
               "import groups.crypto")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION" in proc.stderr
