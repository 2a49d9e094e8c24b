"""Opening the kernel's LLM: the engine for the model a spec names.

`openai:URL[#MODEL]` is a server speaking the OpenAI protocol (RemoteModel, driven by
RemoteEngine); anything else is a model loaded here (Backend, driven by BatchEngine). The
kernel sees only the Engine; this module is the one place that pairs models with engines.
"""

from __future__ import annotations

from functools import singledispatch

import trio

from llmos.config import KernelConfig
from llmos.kernel.model.backend import Backend
from llmos.kernel.model.engine import BatchEngine, Engine
from llmos.kernel.model.kvcache import KVPool
from llmos.kernel.model.remote import RemoteEngine, RemoteModel, is_remote
from llmos.kernel.model.scheduler import Scheduler


async def open_engine(config: KernelConfig, model: Backend | RemoteModel | None = None) -> Engine:
    """The engine for `config.model`, or for a model already opened."""
    if model is None and is_remote(config.model):
        model = await RemoteModel.open(config.model)
    elif model is None:
        model = await trio.to_thread.run_sync(Backend.load, config.model, config.weights, config.threads, config.device)
    scheduler = Scheduler(config.policy, config.max_batch, config.quantum, config.prefill_chunk, config.prefill_first)
    return engine_for(model, scheduler, config)


@singledispatch
def engine_for(model: object, scheduler: Scheduler, config: KernelConfig) -> Engine:
    raise TypeError(f"no engine drives a {type(model).__name__}")


@engine_for.register
def _batch(model: Backend, scheduler: Scheduler, config: KernelConfig) -> Engine:
    pool = KVPool(model.shape, int(config.kv_budget_mb * 2**20), config.kv_eviction)
    return BatchEngine(model, scheduler, pool, config.prefix_sharing)


@engine_for.register
def _remote(model: RemoteModel, scheduler: Scheduler, config: KernelConfig) -> Engine:
    return RemoteEngine(model, scheduler)
