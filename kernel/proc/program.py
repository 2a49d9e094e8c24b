"""Loading an agent program: the `exec` of llmos.

A program is an async function `main(sys, args)`. A program spec names it as one of:
  path/to/agent.py            the file's `main`
  package.module[:function]   an importable module's `main` (or the named function)
  chat                        a bundled example (llmos.agents.examples.chat)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

Entry = Callable[[Any, list[str]], Awaitable[Any]]
EXAMPLES_PACKAGE = "llmos.agents.examples"


class ProgramError(Exception):
    """Raised when a spec names no program (`missing`) or names something not runnable."""

    def __init__(self, message: str, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def load(spec: str) -> Entry:
    if not spec or not spec.strip():
        raise ProgramError("empty program name", missing=True)
    if spec.endswith(".py") or "/" in spec or spec.startswith("."):
        return _entry(_load_file(Path(spec)), "main", spec)
    module_name, _, func = spec.partition(":")
    candidates = [module_name] if "." in module_name else [f"{EXAMPLES_PACKAGE}.{module_name}", module_name]
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # this candidate does not exist; a missing import inside it is an error
            raise ProgramError(f"{spec}: {exc}", missing=False) from exc
        return _entry(module, func or "main", spec)
    raise ProgramError(f"no such program: {spec!r} (not a file, module or bundled example)", missing=True)


def _load_file(path: Path) -> Any:
    path = path.expanduser()
    if not path.is_file():
        raise ProgramError(f"no such file: {path}", missing=True)
    name = f"llmos_program_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProgramError(f"{path}: cannot be loaded as Python", missing=False)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ProgramError(f"{path}: failed to load: {type(exc).__name__}: {exc}", missing=False) from exc
    return module


def _entry(module: Any, func: str, spec: str) -> Entry:
    entry = getattr(module, func, None)
    if entry is None:
        raise ProgramError(f"{spec}: no entry point; define `async def {func}(sys, args)`", missing=False)
    if not inspect.iscoroutinefunction(entry):
        raise ProgramError(f"{spec}: `{func}` must be an async function: `async def {func}(sys, args)`", missing=False)
    return entry
