"""The shared LLM: one model per kernel and its batched step.

`Backend.step` runs one forward pass over a flat batch of work items, each feeding some
pending tokens of one sequence (a prompt chunk, or the single token sampled last). It returns
logits only for the items that asked for them. There is no `generate` loop here: the engine
calls `step` once per scheduling round, and sequences join and leave between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from llmos.kernel.model import attention, linear, llama
from llmos.kernel.model.compute import compute, on_compute_thread
from llmos.kernel.model.constraint import Grammars
from llmos.kernel.model.kvcache import DecodeSlab, KVShape, SequenceKV
from llmos.kernel.model.llama import LlamaRunner

SLAB_MAX_TOKENS = 2048  # decoders with longer contexts are attended one by one


@dataclass
class WorkItem:
    kv: SequenceKV
    tokens: list[int]  # pending tokens fed in this step; their positions follow kv.length
    want_logits: bool  # True when these are the last pending tokens and the next one is sampled


@dataclass
class StepPlan:
    """One forward pass laid out: the flat token batch, decoders first."""

    ids: list[int]
    positions: list[int]
    segments: list[attention.Segment]  # everything not in `batch`
    batch: attention.DecodeBatch | None
    keep: list[int]  # rows whose logits are returned, in item order
    items: list[WorkItem]
    argmax_only: bool = False  # every kept row is decoded greedily: only its argmax must be exact
    banned: tuple[int, ...] = ()  # with argmax_only: outputs no kept row may pick (their end tokens)


class Backend:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str = "model",
        threads: int = 0,
        lean: bool = True,
        slots: int = 32,
        weights: str = "fp32",
        device: str | torch.device = "cpu",
    ) -> None:
        attention.register()
        if threads > 0:
            compute.configure(threads)
        self.device = _device(device)
        self.reference_released = False
        self.weights = linear.check_mode(weights, self.device)
        model.set_attn_implementation(attention.ATTN_NAME)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        # Llama-family models get the lean forward; anything else runs transformers' forward
        # with our attention plugged in.
        self.runner = None
        if lean and llama.supports(model):
            calibration = None
            if self.weights == "w8a8":  # SmoothQuant's activation ranges, measured on a few prompts
                calibration = [self.encode_chat([{"role": "user", "content": text}]) for text in llama.CALIBRATION]
            self.runner = LlamaRunner(model, self.weights, self.device, calibration)
        if self.runner is None:
            if self.weights not in ("fp32", "bf16"):
                raise ValueError(f"--weights {self.weights} needs a llama-family model (the lean forward); use fp32 or bf16")
            model.to(self.device, linear.compute_dtype(self.weights))
        self.shape, self.max_context = kv_layout(cfg, self.weights, self.device)
        self.eos_ids = frozenset(_eos_ids(model, tokenizer))
        self.slab = DecodeSlab(self.shape, slots, min(self.max_context, SLAB_MAX_TOKENS))

    @property
    def model_id(self) -> str:
        """The name clients ask for (the OpenAI API's model id)."""
        return self.name

    @classmethod
    def load(cls, spec: str, weights: str = "fp32", threads: int = 0, device: str = "cpu") -> "Backend":
        """Read and prepare the weights, on the compute thread (compute.py)."""
        compute.configure(threads)
        return compute.call(cls._load, spec, weights, device)

    @classmethod
    def _load(cls, spec: str, weights: str, device: str) -> "Backend":
        from llmos.kernel.model import modelstore

        model, tokenizer, name = modelstore.load(spec)
        backend = cls(model, tokenizer, name, weights=weights, device=device)
        if backend.weights != "fp32" and backend.runner is not None:
            backend.release_reference()  # the model is ours alone: its fp32 copy is dead weight
        return backend

    def release_reference(self) -> None:
        """Free transformers' own copy of the weights once the lean forward has its own (in its
        weight format): without it the RSS of a quantized mode would still hold the fp32 model.
        `hf_generate` needs that copy, so it is only for backends that own their model."""
        for param in self.model.parameters():  # (a tensor the runner shares stays alive through it)
            param.data = param.data.new_empty(0)
        self.reference_released = True
        _return_freed_memory()

    # -- text <-> tokens ---------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def new_kv(self) -> SequenceKV:
        return SequenceKV(self.shape)

    @cached_property
    def grammars(self) -> Grammars:
        """Constraint compiler for this model's tokenizer; masks are as wide as its logits."""
        return Grammars(self.tokenizer, int(self.model.config.vocab_size), self.eos_ids)

    # -- the batched step --------------------------------------------------------------

    def step(self, items: list[WorkItem]) -> torch.Tensor:
        """Feed every item's tokens in one forward pass; return [k, vocab] logits for the k
        items with want_logits, in order."""
        return self.run(self.plan(items))

    def plan(self, items: list[WorkItem]) -> StepPlan:
        """Make room in every cache and seat the decoders. This moves caches, so it runs on the
        thread that owns them (the kernel loop), never while a forward pass is in flight."""
        decoders = _worth_batching([item for item in items if len(item.tokens) == 1])
        seated = bool(decoders) and self.slab.seat([d.kv for d in decoders], [d.kv.length + 1 for d in decoders])
        for item in items:  # after seating: a reclaimed seat's cache moved out with no room to spare
            item.kv.reserve(item.kv.length + len(item.tokens))
        if seated:
            decoders.sort(key=lambda d: d.kv.slot)  # type: ignore[arg-type, return-value]
            first = {id(d): row for row, d in enumerate(decoders)}
            ids = [d.tokens[0] for d in decoders]
            positions = [d.kv.length for d in decoders]
            batch = attention.DecodeBatch.build(self.slab, [d.kv.slot for d in decoders], positions)  # type: ignore[misc]
            rest = [item for item in items if id(item) not in first]
        else:
            first, ids, positions, batch, rest = {}, [], [], None, items
        segments = []
        for item in rest:
            start = item.kv.length
            first[id(item)] = len(ids)
            segments.append(attention.Segment(item.kv, start, len(item.tokens), row=len(ids)))
            ids.extend(item.tokens)
            positions.extend(range(start, start + len(item.tokens)))
        keep = [first[id(item)] + len(item.tokens) - 1 for item in items if item.want_logits]
        return StepPlan(ids, positions, segments, batch, keep, items)

    @on_compute_thread
    @torch.inference_mode()
    def run(self, plan: StepPlan) -> torch.Tensor:
        """The forward pass of a plan, on the compute thread; returns the logits of its `keep`
        rows."""
        ids = torch.tensor(plan.ids, device=self.device)
        positions, keep = torch.tensor(plan.positions, device=self.device), plan.keep
        if self.runner is not None:
            logits = self.runner.forward(ids, positions, plan.segments, keep, plan.batch, plan.argmax_only, plan.banned)
        else:
            with attention.StepContext(plan.segments, plan.batch):
                out = self.model(
                    input_ids=ids.unsqueeze(0),
                    position_ids=positions.unsqueeze(0),
                    use_cache=False,
                    logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self.device) if keep else 1,
                )
            logits = out.logits[0] if keep else out.logits[0, :0]
        for item in plan.items:
            item.kv.token_ids.extend(item.tokens)
        return logits.float().cpu()  # sampling (and its seeded generators) runs on the CPU

    @on_compute_thread
    @torch.inference_mode()
    def hf_generate(self, prompt_ids: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
        """Greedy completion by transformers' own `generate`, one request alone: the reference
        that batched outputs are checked against, and the baseline that benchmarks beat."""
        if self.reference_released:
            raise RuntimeError(f"transformers' copy of the weights was released (--weights {self.weights}): use fp32")
        self.model.set_attn_implementation("sdpa")
        try:
            device = next(self.model.parameters()).device
            out = self.model.generate(
                torch.tensor([prompt_ids], device=device),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens if ignore_eos else None,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=min(self.eos_ids),
            )
        finally:
            self.model.set_attn_implementation(attention.ATTN_NAME)
        new = out[0, len(prompt_ids) :].tolist()
        return new[:-1] if new and new[-1] in self.eos_ids and not ignore_eos else new


# Measured on this model's shapes: one attention call costs about as much as reading 470 more
# key/value positions (0.09 us each per layer at 32 seats).
CALL_COST_POSITIONS = 470


def _worth_batching(decoders: list[WorkItem]) -> list[WorkItem]:
    """The decoders to attend together in the slab. A batched call reads every seat up to the
    longest context in it, so one long context among short ones would make every seat read
    that far; the longest ones are attended alone when that costs less, by a simple model:
    batching the k shortest costs k x (longest of them), each one left out costs its own
    length plus the cost of a call."""
    if len(decoders) < 2:
        return decoders
    ordered = sorted(decoders, key=lambda d: d.kv.length)
    needs = [d.kv.length + 1 for d in ordered]
    alone = [n + CALL_COST_POSITIONS for n in needs]
    best_k, best_cost, left_out = len(needs), len(needs) * needs[-1], 0
    for k in range(len(needs) - 1, 0, -1):  # k shortest batched, the rest alone
        left_out += alone[k]
        cost = k * needs[k - 1] + left_out
        if cost < best_cost:
            best_k, best_cost = k, cost
    return ordered[:best_k]


def _return_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS (large frees mostly are already)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def kv_layout(cfg: Any, weights: str, device: torch.device) -> tuple[KVShape, int]:
    """A model's KV cache shape in a weight format, and its longest context, from its config."""
    shape = KVShape(
        layers=cfg.num_hidden_layers,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        dtype=linear.compute_dtype(weights),
        device=device,
    )
    max_context = int(getattr(cfg, "max_position_embeddings", 2048))
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        # Our attention sees every stored position; within the window that is exactly what
        # sliding-window attention computes, beyond it it is not: contexts stop there.
        max_context = min(max_context, int(window))
    return shape, max_context


def _device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch has no CUDA device available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device}; choose cpu or cuda")
    return device


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # Chat models end a turn with a special token that is not always the configured EOS.
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids
