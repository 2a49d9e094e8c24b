"""Confining an agent worker: what it applies to itself after the fork, before its program loads.

Each part is a Linux mechanism that needs no root and that the worker cannot undo:
  rlimits    address space, CPU seconds, open files, no core dumps (setrlimit)
  Landlock   file access only beneath the process's fs root (read-write), its temp folder, and
             read-only what Python needs (the interpreter, its libraries, the program's own
             folder); no execve; no signals to processes outside the sandbox (ABI >= 6)
  seccomp    no new processes (fork, vfork, clone without CLONE_THREAD, clone3 -> ENOSYS so
             threads fall back to clone), no AF_UNIX sockets of its own (it talks to the kernel
             over the channel it was given), no ptrace/process_vm_*, no io_uring, no unshare
  caps       every capability dropped (a worker of a kernel running as root is root without
             any privilege), no_new_privs
The syscall numbers and struct layouts are Linux's; a missing mechanism (Landlock off, another
architecture for seccomp) is reported by `support()` so the kernel can say so once, and the
worker starts without it. Everything here is called through ctypes: no dependency to install.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import os
import platform
import resource
import struct
from dataclasses import dataclass, field

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

# -- syscall numbers ------------------------------------------------------------------------

_ARCH = platform.machine()
_NR = {  # per architecture; Landlock and clone3 are the same everywhere (the unified table)
    "x86_64": dict(fork=57, vfork=58, clone=56, clone3=435, socket=41, ptrace=101, process_vm_readv=310,
                   process_vm_writev=311, io_uring_setup=425, unshare=272, setns=308, capset=126, kill=62, tkill=200,
                   tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424, pidfd_open=434),
    "aarch64": dict(fork=None, vfork=None, clone=220, clone3=435, socket=198, ptrace=117, process_vm_readv=270,
                    process_vm_writev=271, io_uring_setup=425, unshare=97, setns=268, capset=91, kill=129, tkill=130,
                    tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_send_signal=424, pidfd_open=434),
}.get(_ARCH)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(_ARCH)
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446

# -- Landlock ---------------------------------------------------------------------------------

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6
RULE_PATH_BENEATH = 1
CREATE_RULESET_VERSION = 1 << 0

FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # what a rule on a file may grant
READ = FS_READ_FILE | FS_READ_DIR
READ_WRITE = (
    READ | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SYM | FS_MAKE_FIFO
    | FS_MAKE_SOCK | FS_REFER | FS_TRUNCATE
)  # fmt: skip


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers; 0 when Landlock is absent or disabled."""
    v = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(int(v), 0)


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _landlock(abi: int, read_write: list[str], read_only: list[str], list_only: list[str]) -> None:
    handled = _handled_fs(abi)
    attr = _RulesetAttr(handled_access_fs=handled, handled_access_net=0,
                        scoped=(SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET) if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 8  # older kernels reject fields they do not know
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        _fail("landlock_create_ruleset")
    try:
        for paths, rights in ((list_only, FS_READ_DIR), (read_only, READ), (read_write, READ_WRITE)):
            for path in paths:
                _add_rule(int(ruleset), path, rights & handled)
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)


def _add_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist here needs no rule
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        if _libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH), ctypes.byref(rule),
                         ctypes.c_uint32(0)) < 0:  # fmt: skip
            _fail(f"landlock_add_rule {path}")
    finally:
        os.close(fd)


# -- seccomp ---------------------------------------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
CLONE_THREAD = 0x00010000
AF_UNIX = 1
X32_SYSCALL_BIT = 0x40000000
# BPF opcodes
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_supported() -> bool:
    return _NR is not None and _libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0


def _seccomp_program(self_pid: int) -> list[tuple[int, int, int, int]]:
    """The filter, as (code, jt, jf, k); jumps count instructions skipped."""
    assert _NR is not None and _AUDIT_ARCH is not None
    deny_eperm = SECCOMP_RET_ERRNO | errnos.EPERM
    prog: list = []

    def ret(k: int) -> None:
        prog.append((_RET_K, 0, 0, k))

    # Wrong architecture (a 32-bit syscall entry) or an x32 syscall: refused.
    prog.append((_LD_W_ABS, 0, 0, 4))
    prog.append((_JEQ_K, 1, 0, _AUDIT_ARCH))
    ret(deny_eperm)
    prog.append((_LD_W_ABS, 0, 0, 0))
    prog.append((_JGE_K, 0, 1, X32_SYSCALL_BIT))
    ret(deny_eperm)
    simple = [
        ("fork", errnos.EPERM), ("vfork", errnos.EPERM), ("clone3", errnos.ENOSYS), ("ptrace", errnos.EPERM),
        ("process_vm_readv", errnos.EPERM), ("process_vm_writev", errnos.EPERM), ("io_uring_setup", errnos.EPERM),
        ("unshare", errnos.EPERM), ("setns", errnos.EPERM), ("pidfd_send_signal", errnos.EPERM),
        ("pidfd_open", errnos.EPERM),
    ]  # fmt: skip
    for name, err in simple:
        nr = _NR[name]
        if nr is None:
            continue
        prog.append((_JEQ_K, 0, 1, nr))
        ret(SECCOMP_RET_ERRNO | err)
    # clone: a thread (CLONE_THREAD) is allowed, a new process is not.
    prog.append((_JEQ_K, 0, 4, _NR["clone"]))
    prog.append((_LD_W_ABS, 0, 0, 16))  # args[0], low 32 bits
    prog.append((_JSET_K, 1, 0, CLONE_THREAD))
    ret(deny_eperm)
    ret(SECCOMP_RET_ALLOW)
    # Signals only to itself (its own threads included): the first argument is its pid. (Landlock's
    # signal scope says the same where the kernel has it; this holds where it has not.)
    for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        prog.append((_JEQ_K, 0, 4, _NR[name]))
        prog.append((_LD_W_ABS, 0, 0, 16))
        prog.append((_JEQ_K, 1, 0, self_pid))
        ret(deny_eperm)
        ret(SECCOMP_RET_ALLOW)
    # socket(AF_UNIX, ...): refused; other families allowed.
    prog.append((_JEQ_K, 0, 4, _NR["socket"]))
    prog.append((_LD_W_ABS, 0, 0, 16))
    prog.append((_JEQ_K, 0, 1, AF_UNIX))
    ret(SECCOMP_RET_ERRNO | errnos.EACCES)
    ret(SECCOMP_RET_ALLOW)
    ret(SECCOMP_RET_ALLOW)
    return prog


def _seccomp() -> None:
    prog = _seccomp_program(os.getpid())
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        _fail("prctl(PR_SET_SECCOMP)")


# -- capabilities -----------------------------------------------------------------------------

_CAP_VERSION_3 = 0x20080522


def _drop_capabilities() -> None:
    """No privilege left: the bounding set emptied (nothing regained by exec), then the
    effective, permitted and inheritable sets cleared."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    header = struct.pack("Ii", _CAP_VERSION_3, 0)
    data = bytes(24)  # two __user_cap_data_struct of three u32: all zero
    if _libc.syscall(ctypes.c_long(_NR["capset"] if _NR else 126), header, data) != 0:
        _fail("capset")


# -- putting it together ----------------------------------------------------------------------


@dataclass(frozen=True)
class Support:
    landlock: int  # ABI version, 0: none
    seccomp: bool

    def describe(self) -> str:
        parts = [f"landlock abi {self.landlock}" if self.landlock else "NO landlock (direct file access is not confined)",
                 "seccomp" if self.seccomp else f"NO seccomp on {_ARCH} (os.fork is not refused)"]
        return ", ".join(parts)


def support() -> Support:
    return Support(landlock=landlock_abi(), seccomp=seccomp_supported())


@dataclass
class Confinement:
    read_write: list[str]
    read_only: list[str]
    list_only: list[str] = field(default_factory=list)  # folders that may be listed, nothing beneath read
    address_space: int | None = None  # bytes
    cpu_seconds: int | None = None
    open_files: int | None = None


def limit_resources(c: Confinement) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if c.open_files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (c.open_files, c.open_files))
    if c.cpu_seconds is not None:  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.setrlimit(resource.RLIMIT_CPU, (c.cpu_seconds, c.cpu_seconds + 1))
    if c.address_space is not None:
        resource.setrlimit(resource.RLIMIT_AS, (c.address_space, c.address_space))


def confine(c: Confinement, have: Support) -> None:
    """Apply everything, in the order that works: the rlimits, Landlock (which needs the
    filesystem still open to add its rules), then capabilities and seccomp last."""
    limit_resources(c)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    if have.landlock:
        _landlock(have.landlock, c.read_write, c.read_only, c.list_only)
    _drop_capabilities()
    if have.seccomp:
        _seccomp()


def set_parent_death_signal(signum: int) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


class SandboxError(OSError):
    pass


def _fail(what: str) -> None:
    err = ctypes.get_errno()
    raise SandboxError(err, f"{what}: {os.strerror(err)}")
