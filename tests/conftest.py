"""Shared fixtures. The real model loads once per test session; a tiny randomly initialised
llama (built here, never downloaded) serves the fast scheduler and syscall tests."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LLMOS_HOME", tempfile.mkdtemp(prefix="llmos-test-home-"))

from contextlib import asynccontextmanager  # noqa: E402
from typing import AsyncIterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from llmos.config import KernelConfig  # noqa: E402
from llmos.kernel.model.backend import Backend  # noqa: E402


@pytest.fixture(scope="session")
def real_backend() -> Backend:
    return Backend.load("smollm2")


@pytest.fixture(scope="session")
def tiny_backend(real_backend: Backend) -> Backend:
    """A 2-layer llama with random weights and the real tokenizer: fast, deterministic."""
    return make_tiny_backend(real_backend.tokenizer)


def make_tiny_backend(tokenizer, seed: int = 0) -> Backend:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    return Backend(model, tokenizer, name="tiny-llama")


@asynccontextmanager
async def kernel_with(backend: Backend, **config) -> AsyncIterator:
    from llmos.runtime import boot

    config.setdefault("prestart_workers", False)  # most tests never spawn: no template for them
    async with boot(KernelConfig(**config), backend=backend) as kernel:
        yield kernel


AGENTS = os.path.join(os.path.dirname(__file__), "agents_for_tests")


def prog(name: str) -> str:
    """Path of a test agent program in tests/agents_for_tests."""
    return os.path.join(AGENTS, f"{name}.py")


def run(backend: Backend, fn, **config):
    """trio.run `fn(kernel, session_handle)` inside a fresh kernel on `backend`."""
    import trio

    from llmos.runtime import session

    async def main():
        async with kernel_with(backend, **config) as kernel:
            return await fn(kernel, session(kernel, "test"))

    return trio.run(main)


async def errno_of(coro):
    """The errno of the SyscallError that awaiting `coro` raises (fails if none is raised)."""
    from llmos.abi.errors import SyscallError

    with pytest.raises(SyscallError) as info:
        await coro
    return info.value.errno
