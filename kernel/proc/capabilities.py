"""What a process may do, fixed when it is spawned and never more than its parent may.

`allow` holds syscall name patterns ("llm.chat", "proc.*", "*"). A child's capabilities are
checked against its own patterns and, through `parent`, against every ancestor's: asking for
more than the parent has simply yields the intersection. `fs_root` confines the fs.* syscalls;
a child's root can only be its parent's or a folder inside it. `quota` (kernel/proc/quota.py) holds
the process's resource limits; a child's are never looser than its parent's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path

from llmos.kernel.proc.quota import Quota


@dataclass(frozen=True)
class Capabilities:
    allow: tuple[str, ...] = ("*",)
    parent: "Capabilities | None" = None
    fs_root: Path = field(default_factory=lambda: Path(os.getcwd()).resolve())
    quota: Quota = Quota()

    def allows(self, syscall: str) -> bool:
        if not any(fnmatchcase(syscall, pattern) for pattern in self.allow):
            return False
        return self.parent is None or self.parent.allows(syscall)

    def narrowed(
        self, allow: list[str] | None = None, fs_root: str | None = None, quota: Quota | None = None
    ) -> "Capabilities":
        """Capabilities for a child: the parent's, further limited to `allow`, to a folder
        inside the parent's root and to `quota`. Raises ValueError for a root outside the parent's."""
        root = self.fs_root
        if fs_root is not None:
            root = (self.fs_root / fs_root).resolve()
            if not root.is_relative_to(self.fs_root):
                raise ValueError(f"fs_root {fs_root!r} is outside the parent's root")
        limits = self.quota if quota is None else quota.within(self.quota)
        if allow is None and root == self.fs_root and limits == self.quota:
            return self
        return Capabilities(tuple(allow) if allow is not None else ("*",), parent=self, fs_root=root, quota=limits)

    def with_quota(self, quota: Quota) -> "Capabilities":
        return self if quota == self.quota else replace(self, quota=quota)

    def describe(self) -> list[str]:
        if self.parent is None:
            return list(self.allow)
        return [*self.allow, "(within parent's)"]

