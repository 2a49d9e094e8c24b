"""The planner's worker: answer one subtask and send the answer to the parent over IPC.

    (spawned by `planner` as: planner_worker TASK SUBTASK)
"""

from __future__ import annotations

SYSTEM = "You are one member of a team working on a larger task. Do only your part, briefly, in three to five sentences."


async def main(sys, args: list[str]) -> str:
    if len(args) != 2:
        raise ValueError("usage: planner_worker TASK SUBTASK")
    task, subtask = args
    reply = await sys.llm.chat(f"The whole task: {task}\nYour part: {subtask}", system=SYSTEM, max_tokens=120)
    me = await sys.proc.getpid()
    await sys.ipc.send(me.ppid, reply.content.strip(), tag="result")
    return reply.content.strip()
