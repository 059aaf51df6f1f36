"""The ``lab`` fixture: a fresh NAT lab per test, always torn down (see netlab.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sweep_stale, unavailable


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Skips without root locally; under CI=true a lab that cannot be built fails."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the NAT lab: {reason}")
        pytest.skip(reason)
    sweep_stale()
    built = Lab(tmp_path)
    try:
        yield built
    finally:
        built.close()
