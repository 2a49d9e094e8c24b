"""Program specs: what `proc.spawn` names, and finding it without running it.

A program is an async function `main(sys, args)`. A program spec names it as one of:
  path/to/agent.py            the file's `main`
  package.module[:function]   an importable module's `main` (or the named function)
  chat                        a bundled example (llmos.agents.examples.chat)

`locate` finds the source and checks, by reading it (never by running it), that it defines the
entry point as an `async def`: the kernel does this at spawn, so a bad spec fails the spawn with
ENOENT or ENOEXEC while no agent code runs in the kernel. Loading (running the module) is the
worker's business (llmos.agents.program).
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_PACKAGE = "llmos.agents.examples"


class ProgramError(Exception):
    """A spec that names no program (`missing`) or names something not runnable."""

    def __init__(self, message: str, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Location:
    spec: str
    source: Path | None  # the file to read (None: a module with no Python source, checked when loaded)
    module: str | None  # the importable name, for a module spec
    func: str  # the entry point's name
    readable: tuple[Path, ...]  # what a sandboxed worker must be able to read to load it
    search_path: Path | None  # the import path entry it was found under (module specs)


def is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or spec.startswith(".")


def locate(spec: str) -> Location:
    """Where `spec`'s program is, checked statically. Raises ProgramError."""
    if not spec or not spec.strip():
        raise ProgramError("empty program name", missing=True)
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ProgramError(f"no such file: {path}", missing=True)
        path = path.resolve()
        _check_source(path, "main", spec)
        return Location(spec, path, None, "main", (path.parent,), None)
    module_name, _, func = spec.partition(":")
    func = func or "main"
    candidates = [module_name] if "." in module_name else [f"{EXAMPLES_PACKAGE}.{module_name}", module_name]
    for name in candidates:
        found = _find_module(name)
        if found is None:
            continue
        origin, search_path, top = found
        if origin is not None:
            _check_source(origin, func, spec)
        readable = tuple(dict.fromkeys(p for p in (top, origin.parent if origin else None) if p is not None))
        return Location(spec, origin, name, func, readable, search_path)
    raise ProgramError(f"no such program: {spec!r} (not a file, module or bundled example)", missing=True)


def _find_module(name: str) -> tuple[Path | None, Path | None, Path | None] | None:
    """(source file, import path entry, top package folder) of module `name`, found without
    importing it or its parents (a package's __init__ is agent code too). None: not found."""
    parts = name.split(".")
    try:
        loaded = sys.modules.get(parts[0])
        spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(parts[0])
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None:
        return None
    top_origin = Path(spec.origin) if spec.origin and spec.has_location else None
    if spec.submodule_search_locations:  # a package: its folder
        top = Path(list(spec.submodule_search_locations)[0]).resolve()
        search_path = top.parent
    else:
        top = top_origin.resolve() if top_origin else None
        search_path = top.parent if top else None
    for i in range(1, len(parts)):
        locations = spec.submodule_search_locations
        if not locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(locations))
        if spec is None:
            return None
    origin = Path(spec.origin).resolve() if spec.origin and spec.has_location else None
    if origin is not None and origin.suffix != ".py":
        origin = None  # an extension module: checked when it is loaded
    return origin, search_path, top


def _check_source(path: Path, func: str, spec: str) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise ProgramError(f"{spec}: cannot be read: {exc}", missing=False) from None
    problem = _entry_problem(str(path), func, st.st_mtime_ns, st.st_size, st.st_ino)
    if problem is not None:
        raise ProgramError(f"{spec}: {problem}", missing=False)


@functools.lru_cache(maxsize=256)
def _entry_problem(path: str, func: str, mtime_ns: int, size: int, inode: int) -> str | None:
    """What is wrong with the entry point of the source at `path` as it is now (cached by its
    stat: a program spawned again and again, the demo's or a fork bomb's, is parsed once)."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    except (OSError, ValueError) as exc:
        return f"cannot be read: {exc}"
    bound = None
    for node in tree.body:  # the last top-level binding of the name wins, as when it runs
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == func:
            bound = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.ImportFrom, ast.Import)) and func in _names_bound(node):
            bound = node
    if bound is None:
        return f"no entry point; define `async def {func}(sys, args)`"
    if isinstance(bound, (ast.FunctionDef, ast.ClassDef)):
        return f"`{func}` must be an async function: `async def {func}(sys, args)`"
    return None


def _names_bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[attr-defined]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
