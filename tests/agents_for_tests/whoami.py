"""Reports what its process looks like from inside: pids, cwd, environment, confinement."""

import os


def _target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # (the listing's own descriptor, closed by now)


async def main(sys, args):
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Seccomp", "NoNewPrivs", "CapEff", "CapBnd", "Threads"):
                status[key] = value.strip()
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "llmos_pid": (await sys.proc.getpid()).pid,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "status": status,
        "open_fds": {int(fd): _target(fd) for fd in os.listdir("/proc/self/fd")},
        "modules_heavy": sorted(m for m in ("torch", "transformers", "chromadb", "numpy", "llmos.kernel") if m in __import__("sys").modules),
    }
