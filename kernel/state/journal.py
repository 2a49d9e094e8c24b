"""The journal: the process table, logs and mailboxes in SQLite (WAL), so a restart loses
nothing the kernel acknowledged.

When: `Kernel.commit()` calls `Journal.commit` after every syscall, before its reply leaves
the kernel, and whenever a process exits; the daemon also commits every second (token
counters). A commit writes only what changed since the last one, in one transaction: new or
changed process rows, new log lines, and the messages that entered or left a mailbox
(kernel/proc/ipc.py; so a message `ipc.send` acknowledged is on disk until `ipc.recv` takes it). WAL with synchronous=NORMAL makes a commit durable
against the daemon being killed (kill -9); against power loss, use synchronous=FULL.

What a restart restores (`Journal.restore`, before any client connects):
  - a process that was alive (any state but ZOMBIE) comes back STOPPED, with its pid, name,
    program, args, nice, capabilities, counters and log. Its program is a coroutine, which
    cannot be checkpointed mid-flight, so `cont` starts it again from its program spec (same
    pid and arguments); `kill`/`term` end it without running it. Its memory pages are filed by
    pid in chromadb and its pid is kept, so they are found again.
  - an exited, unreaped process comes back ZOMBIE with its exit code, reason and result.
  - reaped processes come back as records only (their logs stay readable).
  - pids keep counting from where they were, so no pid is ever reused.
  - mailboxes: the messages waiting for a restored process are in its mailbox again, in
    order, with sender and tag.
Sessions (shells, remote clients) are not restored: their code runs outside the daemon and
its connection is gone. Their children are adopted by the kernel (ppid 0). The KV cache is
not saved: a restored process prefills again on its next llm.chat.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.proc.ipc import Message
from llmos.kernel.proc.process import LOG_LINES, REAPED_KEPT, Process
from llmos.kernel.proc.quota import Quota

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

SCHEMA = """
CREATE TABLE IF NOT EXISTS procs (
    pid INTEGER PRIMARY KEY, ppid INTEGER NOT NULL, name TEXT NOT NULL, program TEXT NOT NULL,
    args TEXT NOT NULL, nice INTEGER NOT NULL, state TEXT NOT NULL, caps TEXT NOT NULL,
    created REAL NOT NULL, ended REAL, exit_code INTEGER, exit_reason TEXT NOT NULL,
    result TEXT, prompt_tokens INTEGER NOT NULL, generated_tokens INTEGER NOT NULL,
    llm_time REAL NOT NULL, syscalls INTEGER NOT NULL, reaped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS logs (
    pid INTEGER NOT NULL, seq INTEGER NOT NULL, line TEXT NOT NULL, PRIMARY KEY (pid, seq)
);
CREATE TABLE IF NOT EXISTS mailbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, sender INTEGER NOT NULL,
    tag TEXT, body TEXT NOT NULL, size INTEGER NOT NULL, sent REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

PROC_COLUMNS = (
    "pid", "ppid", "name", "program", "args", "nice", "state", "caps", "created", "ended", "exit_code",
    "exit_reason", "result", "prompt_tokens", "generated_tokens", "llm_time", "syscalls",
)
UPSERT = (
    f"INSERT OR REPLACE INTO procs ({', '.join(PROC_COLUMNS)}, reaped) "
    f"VALUES ({', '.join('?' for _ in PROC_COLUMNS)}, 0)"
)


@dataclass
class Restored:
    """What `restore` brought back."""

    stopped: list[int] = field(default_factory=list)  # alive before: now STOPPED, `cont` re-execs
    zombies: list[int] = field(default_factory=list)
    reaped: int = 0
    messages: int = 0  # put back in restored processes' mailboxes


class Journal:
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous.upper() == 'FULL' else 'NORMAL'}")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self._written: dict[int, tuple] = {}  # pid -> fingerprint of the row on disk
        self._logged: dict[int, int] = {}  # pid -> log lines on disk (Process.log_count)
        self._next_pid = 0
        self._mail: dict[int, tuple[int, Message]] = {}  # id(message) -> (row id, message)
        self.failures = 0
        self.last_error: str | None = None  # the latest failed commit, shown by kernel.stat

    # -- writing --------------------------------------------------------------------------

    def commit(self, kernel: "Kernel") -> None:
        """Write every change to the process table since the last commit, in one transaction."""
        rows, lines, trims = [], [], []
        live = set()
        for proc in kernel.procs.procs.values():
            if proc.session:
                continue
            live.add(proc.pid)
            fp = _fingerprint(proc)
            if self._written.get(proc.pid) != fp:
                rows.append(_row(proc, kernel.caps.get(proc.pid)))
                self._written[proc.pid] = fp
            new = min(proc.log_count - self._logged.get(proc.pid, 0), len(proc.log))
            if new > 0:
                first = proc.log_count - new + 1
                recent = reversed(list(islice(reversed(proc.log), new)))
                lines.extend((proc.pid, first + i, line) for i, line in enumerate(recent))
                self._logged[proc.pid] = proc.log_count
                if proc.log_count > LOG_LINES:
                    trims.append((proc.pid, proc.log_count - LOG_LINES))
        gone = [pid for pid in self._written if pid not in live]
        next_pid = kernel.procs.next_pid
        waiting = {id(m): m for box in kernel.mailboxes.boxes.values() for m in box.messages}
        posted = [m for key, m in waiting.items() if key not in self._mail]
        taken = [key for key in self._mail if key not in waiting]
        if not (rows or lines or gone or posted or taken or next_pid != self._next_pid):
            return
        try:
            with self._transaction():
                posted_rows = [self._post(m) for m in posted]
                self.db.executemany("DELETE FROM mailbox WHERE id = ?", [(self._mail[k][0],) for k in taken])
                self.db.executemany(UPSERT, rows)
                self.db.executemany("INSERT OR REPLACE INTO logs (pid, seq, line) VALUES (?, ?, ?)", lines)
                self.db.executemany("DELETE FROM logs WHERE pid = ? AND seq <= ?", trims)
                if gone:
                    self.db.executemany("UPDATE procs SET reaped = 1 WHERE pid = ?", [(p,) for p in gone])
                    self._prune_reaped()
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_pid', ?)", (str(next_pid),))
        except sqlite3.Error as exc:  # the kernel goes on; the operator is told
            self.failures += 1
            self.last_error = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {exc}"
            self._written.clear()  # write everything again next time
            self._logged.clear()
            print(f"llmos journal: commit failed: {exc}", file=sys.stderr)
            return
        for pid in gone:
            self._written.pop(pid, None)
            self._logged.pop(pid, None)
        for key in taken:
            del self._mail[key]
        self._mail.update((id(m), (row, m)) for m, row in zip(posted, posted_rows))
        self._next_pid = next_pid

    def _post(self, m: Message) -> int:
        cur = self.db.execute(
            "INSERT INTO mailbox (pid, sender, tag, body, size, sent) VALUES (?, ?, ?, ?, ?, ?)",
            (m.to, m.sender, m.tag, json.dumps(m.body), m.size, m.sent),
        )
        return int(cur.lastrowid)

    def _prune_reaped(self) -> None:
        self.db.execute(
            "DELETE FROM procs WHERE reaped = 1 AND pid NOT IN "
            "(SELECT pid FROM procs WHERE reaped = 1 ORDER BY pid DESC LIMIT ?)",
            (REAPED_KEPT,),
        )
        self.db.execute("DELETE FROM logs WHERE pid NOT IN (SELECT pid FROM procs)")

    def _transaction(self) -> Any:
        return _Transaction(self.db)

    # -- restoring --------------------------------------------------------------------------

    def restore(self, kernel: "Kernel") -> Restored:
        """Refill a freshly booted kernel's table from disk. Call before anything runs."""
        report = Restored()
        cur = self.db.execute(f"SELECT {', '.join(PROC_COLUMNS)}, reaped FROM procs ORDER BY pid")
        names = [d[0] for d in cur.description]
        records = [dict(zip(names, r)) for r in cur.fetchall()]
        top = 0
        for rec in records:
            proc = self._process(rec)
            top = max(top, proc.pid)
            kernel.procs.add(proc)
            if rec["reaped"]:
                kernel.procs.remove(proc.pid)
                report.reaped += 1
                continue
            kernel.caps[proc.pid] = _caps_from(rec["caps"])
            if proc.alive:
                report.stopped.append(proc.pid)
                proc.write_log("kernel", "restored after a restart: STOPPED; `cont` runs its program again from the start")
            else:
                report.zombies.append(proc.pid)
        for proc in kernel.procs.procs.values():
            if proc.ppid and kernel.procs.get(proc.ppid) is None:
                proc.ppid = 0  # its parent was a session or is gone: the kernel adopts it
        row = self.db.execute("SELECT value FROM meta WHERE key = 'next_pid'").fetchone()
        kernel.procs.reserve(max(top + 1, int(row[0]) if row else 1))
        report.messages = self._restore_mail(kernel)
        return report

    def _restore_mail(self, kernel: "Kernel") -> int:
        """Waiting messages back into their mailboxes; those for processes gone are dropped."""
        stale, count = [], 0
        rows = self.db.execute("SELECT id, pid, sender, tag, body, size, sent FROM mailbox ORDER BY id").fetchall()
        for row_id, pid, sender, tag, body, size, sent in rows:
            proc = kernel.procs.get(pid)
            if proc is None or not proc.alive:
                stale.append((row_id,))
                continue
            message = Message(sender=sender, to=pid, body=json.loads(body), tag=tag, size=size, sent=sent)
            kernel.mailboxes.box(pid).messages.append(message)
            kernel.mailboxes.box(pid).size += size
            self._mail[id(message)] = (row_id, message)
            count += 1
        with self._transaction():
            self.db.executemany("DELETE FROM mailbox WHERE id = ?", stale)
        return count

    def _process(self, rec: dict[str, Any]) -> Process:
        proc = Process(
            pid=rec["pid"], ppid=rec["ppid"], name=rec["name"], program=rec["program"],
            args=json.loads(rec["args"]), nice=rec["nice"],
        )
        proc.created, proc.ended = rec["created"], rec["ended"]
        proc.prompt_tokens, proc.generated_tokens = rec["prompt_tokens"], rec["generated_tokens"]
        proc.llm_time, proc.syscalls = rec["llm_time"], rec["syscalls"]
        lines = self.db.execute(
            "SELECT seq, line FROM logs WHERE pid = ? ORDER BY seq DESC LIMIT ?", (proc.pid, LOG_LINES)
        ).fetchall()
        proc.log.extend(line for _, line in reversed(lines))
        proc.log_count = lines[0][0] if lines else 0
        self._logged[proc.pid] = proc.log_count
        if rec["exit_code"] is not None:
            proc.exit_code, proc.exit_reason = rec["exit_code"], rec["exit_reason"]
            proc.result = json.loads(rec["result"]) if rec["result"] is not None else None
            proc.set_zombie()
            proc.exited.set()
        else:
            proc.exec_pending = True  # no task until `cont` runs its program anew
            proc.set_stopped()
        return proc

    def close(self) -> None:
        self.db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _fingerprint(p: Process) -> tuple:
    return (p.state, p.ppid, p.nice, p.exit_code, p.prompt_tokens, p.generated_tokens, p.syscalls, p.exec_pending)


def _row(p: Process, caps: Capabilities | None) -> tuple:
    return (
        p.pid, p.ppid, p.name, _absolute(p.program), json.dumps(p.args), p.nice, p.state.value, _caps_json(caps),
        p.created, p.ended, p.exit_code, p.exit_reason, None if p.exit_code is None else json.dumps(p.result),
        p.prompt_tokens, p.generated_tokens, round(p.llm_time, 3), p.syscalls,
    )


def _absolute(spec: str) -> str:
    """A program file by its absolute path: a restarted daemon may run in another directory."""
    path = Path(spec)
    if spec.endswith(".py") and not path.is_absolute() and path.is_file():
        return str(path.resolve())
    return spec


def _caps_json(caps: Capabilities | None) -> str:
    layers = []
    while caps is not None:
        layers.append({"allow": list(caps.allow), "fs_root": str(caps.fs_root), "quota": asdict(caps.quota)})
        caps = caps.parent
    return json.dumps(layers[::-1])


def _caps_from(text: str) -> Capabilities:
    caps: Capabilities | None = None
    for layer in json.loads(text):
        quota = Quota(**layer.get("quota", {}))
        caps = Capabilities(tuple(layer["allow"]), parent=caps, fs_root=Path(layer["fs_root"]), quota=quota)
    return caps or Capabilities()
