"""Fan-out: spawn one child per question, let them run concurrently, gather their answers.

    llmos run fanout "What is a CPU?" "What is RAM?" "What is a disk?"

The children share the model through the scheduler's batch: their decode steps run in one
forward pass. Each child may only use the LLM and logging (narrowed capabilities).
"""

from __future__ import annotations

DEFAULT_QUESTIONS = [
    "What does an operating system scheduler do?",
    "What is virtual memory?",
    "What is a system call?",
]


async def main(sys, args: list[str]) -> dict[str, str]:
    questions = args or DEFAULT_QUESTIONS
    children = {}
    for i, question in enumerate(questions):
        pid = await sys.proc.spawn("answer", question, name=f"answer-{i}", allow=["llm.chat", "log", "proc.exit"])
        children[pid] = question
    await sys.log(f"spawned {len(children)} children: {sorted(children)}")
    answers: dict[str, str] = {}
    for _ in children:
        status = await sys.proc.wait()
        question = children[status.pid]
        answers[question] = status.result if status.exit_code == 0 else f"(failed: {status.reason.splitlines()[-1]})"
        await sys.log(f"pid {status.pid} done: {question}")
    return answers
