"""Loading an agent program: the `exec` of llmos, run where the program runs (its worker, a
remote client, or the kernel for trusted in-process code). Which spec names what is
llmos.abi.program; this runs the module and returns its entry point."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from llmos.abi.program import ProgramError, is_file_spec, locate

Entry = Callable[[Any, list[str]], Awaitable[Any]]


def load(spec: str) -> Entry:
    """Import the program `spec` names and return its entry point. Raises ProgramError."""
    where = locate(spec)
    if is_file_spec(spec):
        assert where.source is not None
        return _entry(_load_file(where.source), where.func, spec)
    if where.search_path is not None and str(where.search_path) not in sys.path:
        sys.path.append(str(where.search_path))
    assert where.module is not None
    try:
        module = importlib.import_module(where.module)
    except Exception as exc:
        raise ProgramError(f"{spec}: failed to load: {type(exc).__name__}: {exc}", missing=False) from exc
    return _entry(module, where.func, spec)


def _load_file(path: Path) -> Any:
    name = f"llmos_program_{abs(hash(str(path)))}"
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
