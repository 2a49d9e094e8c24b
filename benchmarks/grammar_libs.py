"""Which grammar library for constrained decoding: xgrammar or llguidance, measured here.

    pip install xgrammar llguidance     # both; llmos depends on the one chosen
    python -m llmos.benchmarks.grammar_libs [--json out.json] [--rounds 3]

With the default model's tokenizer (SmolLM2's, as the kernel loads it), for a few schemas
like the ones llmos constrains to (a tool call, nested objects, enums and arrays, any JSON
object, a regex): the time to compile each constraint, and the time to compute the next-token
mask at every step of a valid output, for one sequence and for 32 (each library's parallel
batch call, and one call per sequence in a loop). The two libraries are timed in alternation
within each round, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

BATCH = 32

SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "tool_call": (
        {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "tool": {"const": "calc"},
                        "arguments": {
                            "type": "object",
                            "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": 1000}},
                            "required": ["expression"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["tool", "arguments"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                    "additionalProperties": False,
                },
            ]
        },
        {"tool": "calc", "arguments": {"expression": "(17 * 23) + sqrt(2) / 2"}},
    ),
    "nested": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0, "maximum": 130},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"],
                    "additionalProperties": False,
                },
                "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
                "score": {"type": "number"},
                "nickname": {"type": "string"},
            },
            "required": ["name", "age", "address", "tags", "score"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "address": {"city": "London", "zip": "12345"}, "tags": ["red", "blue"], "score": 9.5},
    ),
    "json_object": (
        {"type": "object"},
        {"title": "Report", "items": [1, 2, 3], "ok": True, "meta": {"by": "someone", "pages": 12}},
    ),
}
REGEX = (r"\d{3}-\d{3}-\d{4}", "555-123-4567")


def load_tokenizer():
    from transformers import AutoTokenizer

    from llmos.kernel.model import modelstore

    source = modelstore.resolve("smollm2")
    path = modelstore.converted_dir(source)
    if not (path / "config.json").exists():
        modelstore.load("smollm2")  # converts once
    return AutoTokenizer.from_pretrained(path)


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.vocab = len(tokenizer)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab)
        self.batch = xgr.BatchGrammarMatcher()
        # Its cache off: otherwise every round after the first would compile for free.
        self.compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)

    def compile(self, kind: str, spec: Any) -> Any:
        compiler = self.compiler
        if kind == "regex":
            return compiler.compile_regex(spec)
        return compiler.compile_json_schema(json.dumps(spec))

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self, n: int) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(n, self.vocab)

    def fill(self, m: Any, mask: torch.Tensor) -> None:
        m.fill_next_token_bitmask(mask, 0)

    def fill_batch(self, ms: list[Any], mask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(ms, mask)

    def accept(self, m: Any, token: int) -> bool:
        return m.accept_token(token)


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.lt = llguidance.torch
        self.vocab = len(tokenizer)
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab)
        self.executor = llguidance.LLExecutor()

    def compile(self, kind: str, spec: Any) -> Any:
        M = self.llg.LLMatcher
        grammar = M.grammar_from_regex(spec) if kind == "regex" else M.grammar_from_json_schema(spec)
        m = M(self.tok, grammar, log_level=0)  # building the matcher is where the grammar compiles
        assert not m.is_error(), m.get_error()
        return grammar

    def matcher(self, grammar: Any) -> Any:
        return self.llg.LLMatcher(self.tok, grammar, log_level=0)

    def bitmask(self, n: int) -> torch.Tensor:
        return self.lt.allocate_token_bitmask(n, self.vocab)

    def fill(self, m: Any, mask: torch.Tensor) -> None:
        self.lt.fill_next_token_bitmask(m, mask, 0)

    def fill_batch(self, ms: list[Any], mask: torch.Tensor) -> None:
        self.lt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(ms)], mask)

    def accept(self, m: Any, token: int) -> bool:
        return m.consume_token(token)


def tokens_of(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def measure(lib: Any, kind: str, spec: Any, tokens: list[int]) -> dict[str, float]:
    # Compiling includes the first mask: a library may build its tables lazily, on first use.
    t = time.perf_counter()
    compiled = lib.compile(kind, spec)
    lib.fill(lib.matcher(compiled), lib.bitmask(1))
    compile_ms = (time.perf_counter() - t) * 1000
    # batch 1: a mask, then the token, through the whole output
    m, mask = lib.matcher(compiled), lib.bitmask(1)
    one = []
    for tok in tokens:
        t = time.perf_counter()
        lib.fill(m, mask)
        one.append(time.perf_counter() - t)
        assert lib.accept(m, tok), f"{lib.name} refused a token of a valid output"
    # batch 32: 32 sequences of the same output, each a few tokens apart (different states)
    ms = [lib.matcher(compiled) for _ in range(BATCH)]
    for i, mm in enumerate(ms):
        for tok in tokens[: i % 4]:
            lib.accept(mm, tok)
    mask = lib.bitmask(BATCH)
    batch, loop = [], []
    for step in range(len(tokens) - 4):
        t = time.perf_counter()
        lib.fill_batch(ms, mask)
        batch.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i, mm in enumerate(ms):  # the same masks again, one call per sequence
            lib.fill(mm, mask[i : i + 1])
        loop.append(time.perf_counter() - t)
        for i, mm in enumerate(ms):
            lib.accept(mm, tokens[step + i % 4])
    return {
        "compile_ms": compile_ms,
        "mask_b1_us": statistics.median(one) * 1e6,
        "mask_b32_us": statistics.median(batch) * 1e6,
        "mask_b32_mean_us": statistics.fmean(batch) * 1e6,
        "mask_b32_loop_us": statistics.median(loop) * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    tokenizer = load_tokenizer()
    t = time.perf_counter()
    libs = []
    setup = {}
    for cls in (XGrammar, LLGuidance):
        t = time.perf_counter()
        libs.append(cls(tokenizer))
        setup[cls.name] = (time.perf_counter() - t) * 1000
    cases = [(name, "json", schema, json.dumps(example)) for name, (schema, example) in SCHEMAS.items()]
    cases.append(("regex", "regex", REGEX[0], REGEX[1]))
    results: dict[str, dict[str, list[dict[str, float]]]] = {lib.name: {c[0]: [] for c in cases} for lib in libs}
    for _ in range(args.rounds):
        for name, kind, spec, text in cases:
            tokens = tokens_of(tokenizer, text)
            for lib in libs:
                results[lib.name][name].append(measure(lib, kind, spec, tokens))
    print("tokenizer setup: " + ", ".join(f"{k} {v:.0f} ms" for k, v in setup.items()))
    print(f"{'case':12} {'library':11} {'compile ms':>10} {'mask b1 us':>10} {'mask b32 us':>11} {'b32 mean us':>11} {'b32 loop us':>11}")
    summary: dict[str, Any] = {"setup_ms": setup, "cases": {}}
    for name, *_ in cases:
        for lib in libs:
            runs = results[lib.name][name]
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            summary["cases"].setdefault(name, {})[lib.name] = row
            print(f"{name:12} {lib.name:11} {row['compile_ms']:10.1f} {row['mask_b1_us']:10.1f} "
                  f"{row['mask_b32_us']:11.1f} {row['mask_b32_mean_us']:11.1f} {row['mask_b32_loop_us']:11.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
