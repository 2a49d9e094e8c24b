"""The layering promises that matter at run time: the ABI and the SDK load without the kernel.

(The import graph as a whole is checked by import-linter's contracts in pyproject.toml, run by
.ci/run; these tests check what a user would hit: an agent worker or a remote client on a
machine where torch is not installed.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK_HEAVY = """
import sys
class Blocker:
    # Makes torch (and the kernel's other heavy dependencies) unimportable, as on a machine
    # that has only the SDK installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "chromadb", "sentence_transformers", "numpy"}:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY + code], capture_output=True, text=True, timeout=120)


def test_remote_sdk_imports_without_torch():
    r = run_python(
        "import llmos\n"
        "import llmos.agents.remote, llmos.agents.sdk, llmos.agents.tooluse, llmos.abi\n"
        "import llmos.agents.worker, llmos.agents.sandbox, llmos.agents.program  # the worker template's imports\n"
        "from llmos import connect\n"
        "import pkgutil, importlib, llmos.agents.examples as ex\n"
        "for m in pkgutil.iter_modules(ex.__path__): importlib.import_module('llmos.agents.examples.' + m.name)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('llmos.kernel', 'llmos.syscalls', 'llmos.servers', 'llmos.runtime')))\n"
        "print('LOADED', loaded)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout, r.stdout


def test_shell_client_imports_without_torch():
    """`llmos shell` and `llmos run --remote` are clients of the ABI and the SDK: the command
    line and the client modules load without the kernel; only shell/boot.py (a kernel booted
    in the command: run, demo, shell --local) brings it in, and only when asked for."""
    r = run_python(
        "import llmos.shell.cli, llmos.shell.shell, llmos.shell.run, llmos.shell.demo, llmos.shell.local\n"
        "llmos.shell.cli.build_parser().parse_args(['shell', '--policy', 'fair', '--mem-policy', 'lru-k'])\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('llmos.kernel', 'llmos.syscalls', 'llmos.servers', 'llmos.runtime', 'llmos.benchmarks', 'llmos.shell.boot')))\n"
        "print('LOADED', loaded)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout, r.stdout


def test_the_blocker_really_blocks_torch():
    r = run_python("import llmos.kernel.kernel\n")
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_every_declared_syscall_has_a_handler_and_every_handler_a_declaration():
    # In a fresh interpreter: other tests add tools of their own to the table at run time.
    r = subprocess.run(
        [sys.executable, "-c", (
            "import llmos.syscalls\n"
            "from llmos.abi import SYSCALLS\n"
            "from llmos.syscalls import TABLE\n"
            "assert set(SYSCALLS) == set(TABLE), set(SYSCALLS) ^ set(TABLE)\n"
            "for name, spec in SYSCALLS.items():\n"
            "    e = TABLE[name]\n"
            "    assert (e.request, e.response, e.chunk, e.doc) == (spec.request, spec.response, spec.chunk, spec.doc), name\n"
            "    assert spec.doc, name\n"
            "print('ok', len(SYSCALLS))\n"
        )],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def test_only_the_process_module_assigns_process_state():
    """xv6's rule: proc.c owns p->state. Here kernel/proc/process.py owns it; the kernel and
    the engine change a process's state only through its transitions."""
    owner = ROOT / "kernel" / "proc" / "process.py"
    offenders = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.resolve() == owner or path.parts[len(ROOT.parts)] not in ("kernel", "syscalls", "servers", "shell"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in ("state", "activity", "stopped", "wchan"):
                        offenders.append(f"{path.relative_to(ROOT)}:{sub.lineno} assigns .{sub.attr}")
    assert not offenders, "\n".join(offenders)


def test_import_contracts_hold():
    """import-linter's contracts (pyproject.toml): the layers, the ABI's, the agents' and the
    shell client's imports."""
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_finds_nothing():
    r = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]
