"""Every benchmark in bench/ runs in its ``--quick`` mode, so that a broken bench fails the
suite instead of rotting until someone runs ``make bench`` (issue 15, finding 9).

The benches are found, not listed: each module of bench/ that runs as a script
(``if __name__ == "__main__":``) is one, so a new bench is covered the day it lands.
A quick run must exit 0 and print its Markdown table. A bench whose environment is
missing (bench.shaped without root) prints a line ending in ``skipped`` instead: that is
a skip here, and a failure under CI=true, where the environment must be there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "bench"
QUICK_TIMEOUT = 240  # seconds; a quick run takes a few (tens on a loaded 2-core machine)


def benches() -> list[str]:
    return sorted(path.stem for path in BENCH.glob("*.py")
                  if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"))


def test_the_benches_are_found() -> None:
    assert {"bootstrap", "crypto", "dht", "mesh", "senderkeys"} <= set(benches())
    assert "nodes" not in benches() and "httpload" not in benches()  # libraries


@pytest.mark.timeout(QUICK_TIMEOUT + 30)
@pytest.mark.parametrize("name", benches())
def test_quick_run_prints_its_table(name: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=QUICK_TIMEOUT, check=False)
    output = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, output
    table = re.search(r"^\|[-:| ]+\|$", proc.stdout, re.MULTILINE)
    skipped = re.search(r"^(.*): skipped$", proc.stdout, re.MULTILINE)
    if table is None and skipped is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run bench.{name}: {skipped.group(1)}")
        pytest.skip(skipped.group(1))
    assert table is not None, f"bench.{name} printed no table\n{output}"
