"""Weight modes (--weights): each runs the lean forward with its own weight format, close to
fp32; on the real model each still answers; fp32 stays the exact, batch-invariant default."""

from __future__ import annotations

import pytest
import torch
import trio
from conftest import kernel_with

from llmos.config import WEIGHT_MODES, KernelConfig
from llmos.kernel.model.backend import Backend, WorkItem
from llmos.kernel.model.linear import INT4_GROUP, Int4Linear, Int8Linear, make_linear
from llmos.runtime import session


def logits_of(backend: Backend, ids: list[int]) -> torch.Tensor:
    kv = backend.new_kv()
    plan = backend.plan([WorkItem(kv, ids, True)])
    plan.keep = list(range(len(ids)))
    return backend.run(plan)


def test_quantized_linears_reconstruct_their_weights():
    torch.manual_seed(0)
    w, bias = torch.randn(64, 4 * INT4_GROUP), torch.randn(64)
    x = torch.randn(5, 4 * INT4_GROUP)
    exact = x @ w.T + bias
    cpu = torch.device("cpu")
    for layer, dtype, tolerance in (
        (make_linear(w, bias, "fp16", cpu), torch.float32, 1e-3),
        (Int8Linear(w, bias, torch.bfloat16), torch.bfloat16, 0.05),
        (Int4Linear(w, bias, torch.bfloat16), torch.bfloat16, 0.2),
        (make_linear(w, bias, "w8a8", cpu), torch.float32, 0.05),
    ):
        error = (layer(x.to(dtype)).float() - exact).norm() / exact.norm()
        assert error < tolerance, type(layer).__name__
    # w8a8 quantizes each row on its own: a row's result does not depend on its batch.
    w8a8 = make_linear(w, bias, "w8a8", cpu)
    assert torch.equal(w8a8(x)[2:3], w8a8(x[2:3]))
    # Weights already on a 4-bit grid per group of 32 (as a Q4_1 GGUF's are) come back exactly.
    q = torch.randint(0, 16, (64, 4, INT4_GROUP)).float()
    q[..., 0], q[..., 1] = 0, 15  # every group spans its whole range
    gridded = (q * (torch.rand(64, 4, 1) + 0.5) + torch.randn(64, 4, 1)).view(64, -1)
    assert torch.allclose(Int4Linear(gridded, None, torch.float32)(x), x @ gridded.T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mode", [m for m in WEIGHT_MODES if m != "fp32"])
def test_every_mode_is_close_to_fp32_on_the_tiny_model(tiny_backend, mode):
    ids = tiny_backend.encode("the weights of this tiny model are random " * 3)
    reference = logits_of(tiny_backend, ids)
    backend = Backend(tiny_backend.model, tiny_backend.tokenizer, f"tiny-{mode}", weights=mode)
    assert backend.weights == mode and backend.shape.dtype == backend.runner.dtype
    ours = logits_of(backend, ids)
    error = (ours - reference).norm() / reference.norm()
    assert error < 0.08, error


@pytest.mark.parametrize("mode,agreement", [("fp16", 0.99), ("int8", 0.9), ("int4", 0.9), ("w8a8", 0.8)])
def test_quantized_modes_on_the_real_model(real_backend, mode, agreement):
    """Each mode serves chats through the kernel, and its most likely next token agrees with
    fp32's on most positions of a text (`llmos bench quality` measures this in full)."""
    from llmos.benchmarks.quality import TEXT

    backend = Backend(real_backend.model, real_backend.tokenizer, f"smollm2-{mode}", weights=mode)
    ids = real_backend.encode(TEXT)[:200]
    same = (logits_of(backend, ids).argmax(-1) == logits_of(real_backend, ids).argmax(-1)).float().mean()
    assert same >= agreement, same

    async def main():
        async with kernel_with(backend) as kernel:
            sh = session(kernel)
            reply = await sh.llm.chat("What is the capital of France?", max_tokens=16, ignore_eos=True)
            return reply, await sh.call("kernel.stat")

    reply, stat = trio.run(main)
    assert reply.usage.completion_tokens == 16 and stat.weights == mode and stat.device == "cpu"
    if mode != "w8a8":  # w8a8's first token tips to a French answer on this question
        assert "Paris" in reply.content


def test_weight_mode_flags_and_errors(tiny_backend, monkeypatch):
    from llmos.shell.cli import build_parser, config_from

    args = build_parser().parse_args(["run", "--weights", "int4", "--device", "cpu", "x"])
    assert (config_from(args).weights, config_from(args).device) == ("int4", "cpu")
    monkeypatch.setenv("LLMOS_WEIGHTS", "int8")
    assert KernelConfig().weights == "int8"
    monkeypatch.delenv("LLMOS_WEIGHTS")
    monkeypatch.setenv("LLMOS_DTYPE", "bfloat16")  # the older variable still works
    assert KernelConfig().weights == "bf16"
    with pytest.raises(ValueError, match="unknown weight mode"):
        Backend(tiny_backend.model, tiny_backend.tokenizer, weights="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            Backend(tiny_backend.model, tiny_backend.tokenizer, device="cuda")



def test_ignore_eos_bans_end_tokens_in_every_mode(real_backend, monkeypatch):
    """The ban is the engine's, whichever head a mode has (fp32's screen, int8's plain head)."""
    from llmos.kernel.model.sequence import Sequence

    sampled: list[int] = []
    append = Sequence.append
    monkeypatch.setattr(Sequence, "append", lambda self, token: sampled.append(token) or append(self, token))
    backend = Backend(real_backend.model, real_backend.tokenizer, "smollm2-int8", weights="int8")

    async def main():
        async with kernel_with(backend) as kernel:
            sh = session(kernel)
            plain = await sh.llm.chat("What is the capital of France?", max_tokens=40)
            ended = list(sampled)
            sampled.clear()
            banned = await sh.llm.chat("What is the capital of France?", max_tokens=40, ignore_eos=True)
            return plain, ended, banned

    plain, ended, banned = trio.run(main)
    assert plain.usage.completion_tokens < 40 and ended[-1] in backend.eos_ids  # it would end early
    assert banned.usage.completion_tokens == 40 and not backend.eos_ids & set(sampled)
