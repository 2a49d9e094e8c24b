"""Constrained decoding: a sequence's output held to a JSON schema, any JSON object, a regex or
a grammar, by masking its next-token logits to what the constraint allows.

The grammar machinery is llguidance (Rust, no dependencies), chosen over xgrammar by measuring
both with this tokenizer on this CPU (benchmarks/grammar_libs.py): llguidance compiles a schema
in 1-8 ms against xgrammar's 6-45 ms (so nothing needs caching to keep a request's first
token fast), its per-sequence mask costs 30-60 us (xgrammar's 3-20 us; either is far below a
decode step), it has explicit limits for hostile grammars, and it installs as one 8 MB wheel
where xgrammar brings triton (~1 GB, GPU-only) and tvm-ffi.

`Grammars` belongs to a model's tokenizer and turns a `ConstraintSpec` into a `Constraint`:
compiling happens in a worker thread (the syscall awaits it), never on the engine's step. A
`Constraint` is one sequence's matcher: it lives in the Sequence, so it survives preemption,
stop/cont and KV eviction, and it consumes exactly the tokens appended to the output.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import numpy as np
import torch

Kind = Literal["json_schema", "json_object", "regex", "grammar"]
KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "grammar")
MAX_SPEC_CHARS = 100_000
CACHE_SIZE = 64  # compiled constraints kept, most recently used first
MAX_TOKEN_BYTES = 48  # longer than any token of a BPE vocabulary we serve
# A reply held to JSON must also end inside its max_tokens, or it is cut off and does not parse.
# In its last CLOSING_RESERVE tokens, or when it loops (its last tokens repeat a cycle of at most
# LOOP_PERIOD tokens for LOOP_SPAN tokens and three turns, as "jose_jose_jose_jose_" or
# "39.99999999": greedy decoding of a small model inside a free string), the constraint narrows to
# the tokens that close something, wherever the grammar allows one (Constraint._close). Measured
# with SmolLM2-135M (llmos bench structured): all 5 of 210 invalid replies were such loops cut by
# max_tokens.
CLOSING_RESERVE = 16
LOOP_PERIOD = 8
LOOP_SPAN = 8

# One fixed layout for generated JSON: ", " and ": " and no other whitespace. A small model given
# free whitespace can emit newlines until max_tokens; this layout is also json.dumps's own.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class InvalidConstraint(ValueError):
    """The schema, regex or grammar is invalid or uses what the matcher does not support; the
    message says what."""


@dataclass(frozen=True)
class ConstraintSpec:
    kind: Kind
    spec: Any = None  # the schema (a dict) for json_schema, the pattern for regex, the grammar text

    def key(self) -> str:
        return self.kind + "\0" + (json.dumps(self.spec, sort_keys=True) if not isinstance(self.spec, str) else self.spec)


def check_schema(schema: Any) -> None:
    """A JSON schema that is itself valid (Draft 2020-12), or InvalidConstraint naming where not."""
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidConstraint(f"a JSON schema is an object, not {type(schema).__name__}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidConstraint(f"invalid JSON schema at {where}: {exc.message}") from None


def grammar_of(spec: ConstraintSpec) -> str:
    """The llguidance grammar for a spec (not yet checked against the matcher)."""
    from llguidance import LLMatcher

    text = spec.spec if isinstance(spec.spec, str) else json.dumps(spec.spec)
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidConstraint(f"{spec.kind} is {len(text)} characters; at most {MAX_SPEC_CHARS}")
    if spec.kind == "json_schema":
        check_schema(spec.spec)
        return LLMatcher.grammar_from_json_schema(closed(spec.spec), defaults=JSON_LAYOUT)
    if spec.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
    if spec.kind == "regex":
        if not isinstance(spec.spec, str) or not spec.spec:
            raise InvalidConstraint("a regex constraint needs a non-empty pattern")
        return LLMatcher.grammar_from_regex(spec.spec)
    if spec.kind == "grammar":
        if not isinstance(spec.spec, str) or not spec.spec.strip():
            raise InvalidConstraint("a grammar constraint needs the grammar's text")
        return LLMatcher.grammar_from_lark(_lark(spec.spec))
    raise InvalidConstraint(f"unknown constraint kind {spec.kind!r}; one of {', '.join(KINDS)}")


# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_SCHEMA = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames",
           "unevaluatedItems", "unevaluatedProperties", "additionalItems")
_SCHEMAS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def closed(schema: Any, close: bool = True) -> Any:
    """The schema with every object that lists its properties closed to others, unless it says
    otherwise (`additionalProperties` or `unevaluatedProperties`). What it allows is still valid
    for the original; without this a model may add keys until max_tokens. OpenAI's strict mode
    and xgrammar's default do the same. The members of an allOf are left open: each would
    otherwise forbid the others' properties."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA:
        if key in out:
            out[key] = closed(out[key])
    for key in _SCHEMAS:
        if isinstance(out.get(key), list):
            out[key] = [closed(s) for s in out[key]]
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [closed(s, close=False) for s in out["allOf"]]
    if isinstance(out.get("items"), list):
        out["items"] = [closed(s) for s in out["items"]]
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(s) for name, s in out[key].items()}
    if close and "properties" in out and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    return out


def _lark(text: str) -> str:
    """Grammars come in Lark syntax (llguidance's) or llama.cpp's GBNF (`root ::= ...`)."""
    if "::=" in text:
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            return gbnf_to_lark(text)
        except Exception as exc:  # the converter raises plain exceptions for bad input
            raise InvalidConstraint(f"invalid GBNF grammar: {exc}") from None
    return text


class Grammars:
    """Compiles constraints for one tokenizer. The tokenizer's tables are built on first use
    (about a second), in whichever worker thread asks first."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._lltok: Any = None
        self._token_of: dict[bytes, int] = {}  # a token's bytes -> its id
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()  # spec key -> a fresh matcher to copy
        self._closers: Closers | None = None

    def lltokenizer(self) -> Any:
        with self._lock:
            if self._lltok is None:
                import llguidance.hf

                lltok = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids)
                texts = [b""] * self.vocab_size
                for token in range(self.vocab_size):
                    text = lltok.decode_bytes([token])
                    if text and not lltok.is_special_token(token):
                        self._token_of.setdefault(text, token)
                        texts[token] = text
                self._closers = Closers.of(texts)
                self._lltok = lltok
            return self._lltok

    def compile(self, spec: ConstraintSpec) -> "Constraint":
        """A new Constraint for `spec` (blocking: call it from a worker thread), or
        InvalidConstraint saying what is wrong."""
        from llguidance import LLMatcher

        key = spec.key()
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
        if template is None:
            grammar = grammar_of(spec)
            tok = self.lltokenizer()
            error = LLMatcher.validate_grammar(grammar, tok)
            if error:
                raise InvalidConstraint(f"{spec.kind}: {error.strip()}")
            template = LLMatcher(tok, grammar, log_level=0)
            if template.is_error():
                raise InvalidConstraint(f"{spec.kind}: {template.get_error()}")
            with self._lock:
                self._cache[key] = template
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        closers = self._closers if spec.kind in ("json_schema", "json_object") else None
        return Constraint(spec, template.deep_copy(), self.vocab_size, self._token_of, closers)


@dataclass(frozen=True)
class Closers:
    """What closing a JSON value takes, for one tokenizer: each token's bytes, and bitmask rows
    (int32, a model's mask width) of the tokens with a quote (inside a string the only way
    out; outside one it opens a string that the next token can close), with "}" or "]", and
    with "," (it ends a number). Tokens with a backslash are in no row: an escaped quote
    closes nothing."""

    texts: list[bytes]
    quote: torch.Tensor
    bracket: torch.Tensor
    comma: torch.Tensor

    @classmethod
    def of(cls, texts: list[bytes]) -> "Closers":
        has = np.zeros((3, len(texts)), dtype=bool)
        for token, text in enumerate(texts):
            if text and b"\\" not in text:
                has[:, token] = (b'"' in text, b"}" in text or b"]" in text, b"," in text)
        has = np.pad(has, ((0, 0), (0, (-len(texts)) % 32)))
        rows = [torch.from_numpy(np.packbits(row, bitorder="little").view(np.int32)) for row in has]
        return cls(texts, *rows)


class Constraint:
    """One sequence's position in its grammar."""

    def __init__(
        self,
        spec: ConstraintSpec,
        matcher: Any,
        vocab_size: int,
        token_of: dict[bytes, int] | None = None,
        closers: Closers | None = None,
    ) -> None:
        self.spec = spec
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.token_of = token_of or {}
        self.closers = closers  # None: the grammar is not JSON, nothing is narrowed
        self.recent: deque[int] = deque(maxlen=LOOP_PERIOD * 4)  # enough to see any loop
        self.in_string = False  # the output so far ends inside a JSON string
        self._escaped = False  # ... right after its backslash

    @property
    def words(self) -> int:
        """int32 words in this constraint's bitmask row."""
        return (self.vocab_size + 31) // 32

    def fill(self, row: torch.Tensor, remaining: int | None = None) -> bool:
        """Write the allowed next tokens into `row` (int32, `words` long, contiguous): bit i of
        the mask is token i. `remaining`: tokens left in the reply's budget, this one included.
        True if the row was narrowed to closing tokens."""
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)
        forced = self.matcher.compute_ff_bytes()
        if len(forced) > 1:
            self._split_forced(row, forced)
        elif self.closers is not None and ((remaining is not None and remaining <= CLOSING_RESERVE) or self.looping()):
            return self._close(row)
        return False

    def looping(self) -> bool:
        """The last tokens repeat one cycle (see LOOP_PERIOD)."""
        recent = self.recent
        for period in range(1, LOOP_PERIOD + 1):
            span = max(LOOP_SPAN, 3 * period)
            if len(recent) < span + period:
                break
            if all(recent[-i] == recent[-i - period] for i in range(1, span + 1)):
                return True
        return False

    def _close(self, row: torch.Tensor) -> bool:
        """Narrow `row` to the tokens that close something, if it allows any (see
        CLOSING_RESERVE): inside a string, a quote; outside, "}" or "]", else "," (which ends
        a number, or an array item short of minItems), else a quote (a string value to open,
        and close next)."""
        c = self.closers
        assert c is not None
        for closing in (c.quote,) if self.in_string else (c.bracket, c.comma, c.quote):
            narrowed = row & closing
            if narrowed.any():
                row.copy_(narrowed)
                return True
        return False

    def _split_forced(self, row: torch.Tensor, forced: bytes) -> None:
        """When the grammar forces the next bytes, forbid the tokens that would split them
        where the tokenizer would not: a token that is a shorter prefix of the forced bytes
        than the longest one the grammar allows. The model's text then looks like text it was
        trained on. Without this, SmolLM2 after `"expression":` (forced: ` "`) often picks
        the lone space token, its next choice is then squeezed into a bare quote, and it loses
        its way inside the string."""
        candidates = (self.token_of.get(forced[:n]) for n in range(1, min(len(forced), MAX_TOKEN_BYTES) + 1))
        words = row.tolist()
        allowed = [t for t in candidates if t is not None and words[t // 32] >> (t % 32) & 1]
        for token in allowed[:-1]:  # all but the longest the grammar allows
            word, bit = divmod(token, 32)
            value = words[word] & ~(1 << bit) & 0xFFFFFFFF
            row[word] = value - (1 << 32) if value >= 1 << 31 else value

    def advance(self, token: int) -> bool:
        """Consume a sampled token; False if the grammar does not allow it (then the matcher
        is in an error state, which `error` shows)."""
        self.recent.append(token)
        if self.closers is not None:
            self._scan(self.closers.texts[token])
        return bool(self.matcher.consume_token(token))

    def _scan(self, text: bytes) -> None:
        """Follow whether the output is inside a JSON string."""
        for byte in text:
            if self._escaped:
                self._escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self._escaped = True
            elif byte == 0x22:  # quote
                self.in_string = not self.in_string

    @property
    def finished(self) -> bool:
        """Nothing may follow: the output is complete."""
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None


@torch.inference_mode()  # logits come from an inference-mode forward
def apply_masks(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Set to -inf the logits a constraint forbids: row rows[i] of `logits` [n, vocab] by row i
    of `bitmask` [len(rows), words] (bit j of a row allows token j)."""
    vocab = logits.shape[-1]
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")[:, :vocab]
    forbidden = torch.from_numpy(bits == 0)
    index = torch.tensor(rows)
    logits[index] = logits[index].masked_fill_(forbidden, float("-inf"))
