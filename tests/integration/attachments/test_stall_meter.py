"""StallMeter tells time a thread was blocked (a stalled disk) from time it ran or
waited for a CPU (a busy machine), so that a chunk write only goes to the writer
thread for the former. Real kernel accounting, so real waits."""

from __future__ import annotations

import os
import threading
import time

from groups.filestore import StallMeter


def test_running_is_not_blocked_and_waiting_on_a_pipe_is() -> None:
    meter = StallMeter()
    try:
        mark = meter.start()
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:  # busy: running or queued for a CPU
            pass
        assert meter.blocked(mark) < 0.025

        read, write = os.pipe()
        timer = threading.Timer(0.05, os.write, (write, b"x"))
        mark = meter.start()
        timer.start()
        assert os.read(read, 1) == b"x"  # blocked in the kernel, like a stalled pwrite
        assert meter.blocked(mark) >= 0.04
        timer.join()
        os.close(read)
        os.close(write)
    finally:
        meter.close()


def test_without_schedstat_all_wall_time_counts(tmp_path) -> None:
    meter = StallMeter(str(tmp_path / "no-schedstat"))  # as on a system without /proc
    mark = meter.start()
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass
    assert meter.blocked(mark) >= 0.03
