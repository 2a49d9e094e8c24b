"""The `llmos` command on the real model, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def llmos(*args: str, stdin: str | None = None, cwd: Path | None = None, timeout: int = 600):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "llmos", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
    )


def test_run_chat_example():
    r = llmos("run", "chat", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "reused" in r.stdout  # the second turn came from the retained KV cache


def test_run_summarize_example(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("The kernel schedules processes. " * 30 + "\n\n" + "Memory is paged to disk. " * 30)
    r = llmos("run", "--quiet", "summarize", "notes.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 20


def test_run_fanout_example():
    r = llmos("run", "fanout", "What is a CPU?", "What is RAM?")
    assert r.returncode == 0, r.stderr
    assert '"What is a CPU?"' in r.stdout and '"What is RAM?"' in r.stdout
    assert r.stdout.count("spawn:") >= 3  # fanout itself and two children


def test_run_missing_file_and_missing_entry(tmp_path):
    missing = llmos("run", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    noentry = tmp_path / "noentry.py"
    noentry.write_text("x = 1\n")
    r = llmos("run", str(noentry))
    assert r.returncode == 2 and "no entry point" in r.stderr


def test_run_failing_agent_reports_traceback():
    r = llmos("run", str(HERE / "agents_for_tests" / "crasher.py"), "now")
    assert r.returncode == 1
    assert "RuntimeError: boom: now" in r.stderr


def test_shell_commands():
    script = "\n".join([
        "help",
        "spawn answer What is a kernel?",
        "ps",
        "frobnicate",
        "kill notanumber",
        "kill 999",
        "wait",
        "logs 2",
        "ps -a",
        "quit",
    ]) + "\n"
    r = llmos("shell", stdin=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "spawn PROGRAM" in out  # help
    assert "started pid 2" in out
    assert "unknown command: frobnicate" in out
    assert "not a number" in out and "usage: kill PID" in out
    assert "ESRCH" in out
    assert "pid 2 (answer) exited 0" in out
    assert "llm" in out  # the log shows the completion
