"""The shared LLM: one model per kernel and its batched step.

`Backend.step` runs one forward pass over a flat batch of work items, each feeding some
pending tokens of one sequence (a prompt chunk, or the single token sampled last). It returns
logits only for the items that asked for them. There is no `generate` loop here: the engine
calls `step` once per scheduling round, and sequences join and leave between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmos.kernel import attention, llama
from llmos.kernel.llama import LlamaRunner
from llmos.kernel.kvcache import KVShape, SequenceKV


@dataclass
class WorkItem:
    kv: SequenceKV
    tokens: list[int]  # pending tokens fed in this step; their positions follow kv.length
    want_logits: bool  # True when these are the last pending tokens and the next one is sampled


class Backend:
    def __init__(self, model: Any, tokenizer: Any, name: str = "model", threads: int = 0, lean: bool = True) -> None:
        attention.register()
        if threads > 0:
            torch.set_num_threads(threads)
        model.set_attn_implementation(attention.ATTN_NAME)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.shape = KVShape(
            layers=cfg.num_hidden_layers,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            dtype=next(model.parameters()).dtype,
        )
        self.max_context = int(getattr(cfg, "max_position_embeddings", 2048))
        self.eos_ids = frozenset(_eos_ids(model, tokenizer))
        # Llama-family models get the lean forward; anything else runs transformers' forward
        # with our attention plugged in.
        self.runner = LlamaRunner(model) if lean and llama.supports(model) else None

    @classmethod
    def load(cls, spec: str, dtype: str = "float32", threads: int = 0) -> "Backend":
        from llmos.kernel import modelstore

        model, tokenizer, name = modelstore.load(spec, dtype)
        return cls(model, tokenizer, name, threads)

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

    # -- the batched step --------------------------------------------------------------

    @torch.inference_mode()
    def step(self, items: list[WorkItem]) -> torch.Tensor:
        """Feed every item's tokens in one forward pass; return [k, vocab] logits for the k
        items with want_logits, in order."""
        segments: list[attention.Segment] = []
        ids: list[int] = []
        positions: list[int] = []
        keep: list[int] = []
        for item in items:
            start = item.kv.length
            item.kv.reserve(start + len(item.tokens))
            segments.append(attention.Segment(item.kv, start, len(item.tokens)))
            ids.extend(item.tokens)
            positions.extend(range(start, start + len(item.tokens)))
            if item.want_logits:
                keep.append(len(ids) - 1)
        if self.runner is not None:
            logits = self.runner.forward(torch.tensor(ids), torch.tensor(positions), segments, keep)
        else:
            with attention.StepContext(segments):
                out = self.model(
                    input_ids=torch.tensor([ids]),
                    position_ids=torch.tensor([positions]),
                    use_cache=False,
                    logits_to_keep=torch.tensor(keep, dtype=torch.long) if keep else 1,
                )
            logits = out.logits[0] if keep else out.logits[0, :0]
        for item in items:
            item.kv.token_ids.extend(item.tokens)
        return logits.float()


    @torch.inference_mode()
    def hf_generate(self, prompt_ids: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
        """Greedy completion by transformers' own `generate`, one request alone: the reference
        that batched outputs are checked against, and the baseline that benchmarks beat."""
        self.model.set_attn_implementation("sdpa")
        try:
            out = self.model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
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
