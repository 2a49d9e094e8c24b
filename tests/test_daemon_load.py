"""Bounded load: 64 clients at once, each running an agent against a daemon in its own process;
all complete, and the daemon's memory stays bounded (no growth from one round to the next).
The daemon runs the tiny model from a checkpoint directory, so the test measures the daemon,
not the model; `python -m llmos.benchmarks.daemon_load` runs the same load on the real model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio
from daemon_util import DaemonProcess, short_home

from llmos.benchmarks.daemon_load import run_load

CLIENTS = 64
EXITER = Path(__file__).parent / "agents_for_tests" / "exiter.py"


def test_64_clients_complete_with_bounded_rss(tiny_backend):
    model_dir = short_home() / "tiny-llama"
    tiny_backend.model.save_pretrained(model_dir)
    tiny_backend.tokenizer.save_pretrained(model_dir)
    daemon = DaemonProcess(short_home(), "--no-http", "--model", str(model_dir)).start()
    try:
        result = trio.run(run_load, daemon.socket, daemon.token, daemon.proc.pid, CLIENTS, 16, 2)
        still_up = daemon.proc.poll() is None
        env = dict(os.environ, LLMOS_HOME=str(daemon.home))  # and `llmos run --remote` as a user types it
        cli = subprocess.run([sys.executable, "-m", "llmos", "run", "--remote", str(EXITER)],
                             capture_output=True, text=True, timeout=120, env=env)
    finally:
        daemon.stop()
    print(f"\nload: {result}")
    assert result.failed == [] and result.completed == 2 * CLIENTS and still_up
    assert cli.returncode == 3 and "exiter exited 3" in cli.stderr  # proc.exit's code, as in-process
    assert result.tokens > 0 and result.latency_p99_s > 0
    assert result.rss_peak_mb - result.rss_base_mb < 512  # bounded under load
    first, second = result.rss_after_round_mb
    assert second - first < 64  # and a second round of 64 does not grow it
