"""The `llmos` command on the real model, as a user runs it."""

from __future__ import annotations

import os
import re
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
    out = r.stdout
    assert "Paris" in out
    assert "reused" in out  # the second turn came from the retained KV cache
    assert "loading the model SmolLM2" in out and "loaded in" in out  # on the first call, not at boot
    # Each answer is printed once: streamed (lines that start "chat[pid] "), not again by the
    # agent's log lines nor as the program's result.
    streamed = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("chat[") and "] " in line]
    assert streamed and "(streamed above)" in out
    for line in streamed:
        if len(line) >= 20:
            assert out.count(line) == 1, (line, out)


def test_run_summarize_example(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("The kernel schedules processes. " * 30 + "\n\n" + "Memory is paged to disk. " * 30)
    r = llmos("run", "--quiet", "summarize", "notes.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 20


def test_run_fanout_example():
    import json

    r = llmos("run", "fanout", "What is a CPU?", "What is RAM?")
    assert r.returncode == 0, r.stderr
    assert '"What is a CPU?"' in r.stdout and '"What is RAM?"' in r.stdout
    assert r.stdout.count("spawn:") >= 3  # fanout itself and two children
    # One voice per process: each child's lines carry its name and pid, and its answer reads
    # whole in them, never interleaved with the other's tokens.
    answers = json.loads(r.stdout[r.stdout.index("\n{") :])
    for i, question in enumerate(("What is a CPU?", "What is RAM?")):
        lines = [line.split("] ", 1)[1] for line in r.stdout.splitlines() if line.startswith(f"answer-{i}[")]
        # (a log line or an exit may cut a streamed line; its voice goes on on the next one)
        assert answers[question].replace("\n", "") in "".join(lines), (question, lines)


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
    r = llmos("shell", "--local", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "local kernel in this process (--local)" in r.stderr  # it says which kernel it is on
    out = r.stdout
    assert "spawn PROGRAM" in out  # help
    assert "started pid 2" in out
    assert "unknown command: frobnicate" in out
    assert "not a number" in out and "usage: kill PID" in out
    assert "ESRCH" in out
    assert "pid 2 (answer) exited 0" in out
    assert "llm" in out  # the log shows the completion


def test_shell_without_daemon_says_so(tmp_path):
    env_home = tmp_path / "home"
    env_home.mkdir()
    (env_home / "daemon.sock").touch()  # what a daemon killed with -9 leaves
    r = subprocess.run([sys.executable, "-m", "llmos", "shell"], input="ps\n", capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", LLMOS_HOME=str(env_home)))
    assert r.returncode == 1 and r.stdout == ""  # no kernel booted behind the user's back
    assert "no llmos daemon is listening" in r.stderr and "daemon that made it is gone" in r.stderr
    assert "LLMOS_HOME" in r.stderr and "llmos shell --local" in r.stderr


def test_shell_send_text_or_json_and_kernel():
    receiver = HERE / "agents_for_tests" / "receiver.py"
    script = f'spawn {receiver} 3\nsend 2 {{"x": 1}}\nsend --json 2 {{"x": 1}}\nsend --json 2 {{nope\n' \
             f'send 2   two  spaces kept \nwait 2\nkernel\n'
    r = llmos("shell", "--local", stdin=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "sent to 2 (text)" in out and "sent to 2 (JSON dict)" in out
    assert "not JSON" in out  # refused, not sent as text behind the user's back
    result = out[out.index("pid 2 (receiver) exited 0"):]
    assert re.search(r"'body':\s*'\{\"x\": 1\}'", result)  # the text as typed, quotes and all
    assert re.search(r"'body':\s*\{'x': 1\}", result)  # the JSON object
    assert re.search(r"'body':\s*'two  spaces kept'", result)
    assert "local kernel in this process" in out  # `kernel` says where the shell is
