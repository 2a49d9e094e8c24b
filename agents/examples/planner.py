"""A planner: split a task, hand the parts to worker processes, gather their results over IPC
and write a report.

    llmos run planner "Plan a weekend trip to the mountains: transport, food and gear"
    llmos run planner --report trip.md "..."

The model proposes the subtasks (one per line; if it gives fewer than two usable lines the
task is split at its commas and "and"s). Each worker is a child process with narrower
capabilities than the planner: it may use the model, send messages and log, but not touch
files or spawn processes, and it gets a token and time quota. Workers answer concurrently
(their decode steps share the batch) and send their answer to the planner, tagged "result".
The planner takes each worker's message with `ipc.recv(from_pid=...)`: it blocks until the
message arrives, or fails with ESRCH if the worker died first (killed, over quota), which the
report then shows with the worker's exit status.
"""

from __future__ import annotations

import re

from llmos.agents.sdk import Errno, SyscallError

MAX_SUBTASKS = 4
WORKER_CAPS = ["llm.chat", "ipc.send", "proc.getpid", "log", "calc", "time.now", "tools.list"]
WORKER_QUOTA = {"max_tokens": 1500, "max_wall_time": 600, "max_syscalls": 40}
SPLIT_SYSTEM = "You break a task into two to four short, independent subtasks. Write one subtask per line, nothing else."


async def main(sys, args: list[str]) -> dict:
    report_path = "report.md"
    if len(args) >= 2 and args[0] == "--report":
        report_path, args = args[1], args[2:]
    task = " ".join(args).strip()
    if not task:
        raise ValueError("usage: planner [--report FILE] TASK")

    reply = await sys.llm.chat(f"Task: {task}\nSubtasks:", system=SPLIT_SYSTEM, max_tokens=96)
    subtasks = parse_subtasks(reply.content, task) or split_task(task)
    await sys.log(f"{len(subtasks)} subtasks: {subtasks}")

    workers = {}
    for i, subtask in enumerate(subtasks):
        pid = await sys.proc.spawn(
            "planner_worker", task, subtask, name=f"worker-{i}", allow=WORKER_CAPS, quota=WORKER_QUOTA
        )
        workers[pid] = subtask

    sections = []
    failed = []
    for pid, subtask in workers.items():
        try:
            message = await sys.ipc.recv(from_pid=pid, tag="result")
            answer = str(message.body)
        except SyscallError as exc:
            if exc.errno is not Errno.ESRCH:
                raise
            answer = None
        status = await sys.proc.wait(pid)
        if answer is None:
            failed.append(subtask)
            last = status.reason.splitlines()[-1] if status.reason else ""
            answer = f"(worker {pid} exited {status.exit_code} without an answer: {last})"
        sections.append((subtask, pid, answer))

    report = render_report(task, sections)
    await sys.fs.write(report_path, report)
    await sys.log(f"report written to {report_path}")
    return {"report": report_path, "subtasks": subtasks, "failed": failed}


def parse_subtasks(text: str, task: str) -> list[str]:
    """Lines of the model's reply, without numbering or bullets, leaving out any that merely
    restate the task; [] unless two or more remain."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|subtask\s*\d*:?)\s*", "", line, flags=re.IGNORECASE).strip()
        if len(line) >= 3 and line not in lines and not _restates(line, task):
            lines.append(line)
    return lines[:MAX_SUBTASKS] if len(lines) >= 2 else []


def _restates(line: str, task: str) -> bool:
    words = lambda s: set(re.findall(r"\w+", s.lower()))  # noqa: E731
    a, b = words(line), words(task)
    return len(a & b) / max(1, len(a | b)) > 0.75


def split_task(task: str) -> list[str]:
    """The task cut at commas, semicolons and "and": a plan that needs no model."""
    head, _, tail = task.partition(":")
    parts = [p.strip(" .") for p in re.split(r",|;|\band\b", tail if tail else task) if p.strip(" .")]
    if len(parts) < 2:
        return [task]
    return [f"{head.strip()}: {p}" if tail else p for p in parts][:MAX_SUBTASKS]


def render_report(task: str, sections: list[tuple[str, int, str]]) -> str:
    out = [f"# Report: {task}", ""]
    for i, (subtask, pid, answer) in enumerate(sections, 1):
        out += [f"## {i}. {subtask}", "", f"*worker pid {pid}*", "", answer.strip(), ""]
    return "\n".join(out)
