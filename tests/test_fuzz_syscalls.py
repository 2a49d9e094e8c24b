"""Property: whatever a caller sends to the syscall table, the kernel survives.

Hypothesis throws well over 1,000 random requests at `dispatch`: real syscall names, near
misses, garbage names; arguments that are garbage, random JSON, schema-shaped with random
values, oversized; from a live session, a stopped or exited one, or a pid that does not
exist. Every request must end in a response or a SyscallError (or be cut off by our short
timeout); nothing else may come out of dispatch, the kernel's nursery must not die, and
afterwards the kernel still serves a tool call and an LLM call.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import trio
from conftest import kernel_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmos.abi.errors import SyscallError
from llmos.kernel.proc.capabilities import Capabilities
from llmos.kernel.state.audit import AuditLog
from llmos.runtime import local_handle
from llmos.syscalls import TABLE, dispatch

EXAMPLES = 24
PER_EXAMPLE = 45  # at least; 24 x 45 = 1,080 requests
TIMEOUT = 0.15  # seconds per request: blocking calls (sleep, recv, wait) are cut off
# Kept out of reach of random arguments: starting arbitrary commands, and loading the embedder.
UNSAFE = {"mcp.mount", "kb.ingest"}
NAMES = sorted(TABLE)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec=None, categories=("Cs", "Co", "Cc", "Zs")), max_size=10),
    st.sampled_from(["", ".", "..", "../../etc/passwd", "/etc/passwd", "\x00", "*", "stop", "kill", "fs.read"]),
    st.sampled_from([1 << 20, (4 << 20) + 1]).map(lambda n: "x" * n),  # oversized
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12,
)


def for_schema(spec: dict) -> st.SearchStrategy:
    """Values of roughly the right type for one argument, so that many requests reach handlers."""
    if "anyOf" in spec:
        return st.one_of([for_schema(s) for s in spec["anyOf"]])
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    kind = spec.get("type")
    if kind == "integer":
        return st.integers(min_value=-3, max_value=12)  # pids and counts worth hitting
    if kind == "number":
        return st.floats(min_value=0, max_value=0.3)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.one_of(st.text(max_size=12), st.sampled_from(["a.txt", "sub/b.md", "..", "1 + 2", "user", "stop"]))
    if kind == "array":
        return st.lists(for_schema(spec.get("items", {})), max_size=3)
    if kind == "object" or "$ref" in spec:
        return st.dictionaries(st.text(max_size=8), json_scalars, max_size=3)
    return json_values


@st.composite
def typed_args(draw, name: str) -> dict:
    props = TABLE[name].arguments_schema().get("properties", {})
    keys = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
    return {k: draw(for_schema(props[k])) for k in keys}


@st.composite
def requests(draw):
    name = draw(
        st.one_of(
            st.sampled_from(NAMES),
            st.sampled_from(NAMES),
            st.sampled_from(NAMES),
            st.tuples(st.sampled_from(NAMES), st.sampled_from([".x", "*", " ", "s", "\x00"])).map("".join),
            st.text(max_size=30),
            st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2)),
        )
    )
    entry = TABLE.get(name) if isinstance(name, str) else None
    fields = (sorted(entry.request.model_fields) if entry is not None else []) or ["path", "pid", "x"]
    args = draw(
        st.one_of(
            typed_args(name) if entry is not None else st.none(),
            typed_args(name) if entry is not None else st.none(),
            st.none(),
            json_values,
            st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields)),
            st.dictionaries(st.sampled_from(fields) | st.text(max_size=8), json_values, max_size=5),
        )
    )
    caller = draw(st.sampled_from(["session", "session", "session", "stranger"]))
    return name, args, caller


async def fuzz(backend, root: Path, batch, audit: AuditLog) -> int:
    outcomes = 0
    async with kernel_with(backend) as kernel:
        kernel.audit = audit
        allow = tuple(n for n in TABLE if n not in UNSAFE)

        def fresh():
            return kernel.session("fuzz", Capabilities(allow=allow, fs_root=root))

        proc = fresh()
        for name, args, caller in batch:
            if not proc.alive or proc.stopped:  # it exited, or stopped itself: a new session
                kernel.cont(proc)
                proc = fresh()
            pid = proc.pid if caller == "session" else 10_000
            with trio.move_on_after(TIMEOUT):
                try:
                    await dispatch(kernel, pid, name, args)
                except SyscallError:
                    pass
                outcomes += 1
        # The kernel still works: a tool, and the model.
        sh = local_handle(kernel, fresh())
        assert (await sh.call("calc", expression="6 * 7")).result == 42
        reply = await sh.llm.chat("hello", max_tokens=3)
        assert reply.usage.completion_tokens >= 1
        for child in list(kernel.procs):
            if child.alive and not child.session:
                kernel.kill(child)
    return outcomes


def test_random_requests_never_crash_the_kernel(tiny_backend, tmp_path):
    sent = []
    audit = AuditLog(tmp_path / "audit.jsonl")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(batch=st.lists(requests(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE + 10))
    def check(batch):
        sent.append(len(batch))
        trio.run(fuzz, tiny_backend, tmp_path, batch, audit)

    check()
    assert sum(sent) >= 1000, f"only {sum(sent)} requests were sent"
    outcomes = Counter(json.loads(line)["result"] for line in audit.path.read_text().splitlines())
    print(f"\n{sum(sent)} random requests; outcomes: {dict(outcomes.most_common())}")
    assert outcomes["ERROR"] == 0  # nothing but a response or a SyscallError came out of dispatch
    assert outcomes["OK"] > 0 and outcomes["EINVAL"] > 0 and outcomes["ENOSYS"] > 0  # the fuzz reaches handlers
