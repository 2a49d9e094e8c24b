"""Per-process KV caches, and the pool that keeps all of them within one memory budget.

Each process owns one `SequenceKV`: the keys and values of every layer for the tokens of its
context, kept between time slices so that a preempted or blocked process resumes without
prefilling again. The batched forward pass writes new keys/values straight into these buffers
and attends over them in place (see `attention.py`), so joining or leaving the running batch
costs no copy at all.

`KVPool` enforces the global budget. When the caches together exceed it, the least recently
run cache that is not in the running batch is evicted, in one of two ways:
  drop      forget it; the process prefills its context again when it next runs
  compress  keep a bfloat16 copy in RAM (half the bytes); restored when it next runs
The pool is also a prefix cache. Every cache's tokens are indexed by block (a hash chain over
BLOCK-token blocks, as vLLM's prefix caching does), and a cache outlives its process: when a
process exits (an HTTP completion is a short-lived session process) its cache is *retired*, kept
under the same budget and evicted least recently used like any other. A new context then
  - adopts a retired cache whose whole content starts its prompt (a second turn over HTTP, a
    restarted agent): no copy, the cache simply changes owner;
  - or copies the longest prefix any other cache holds (a system prompt shared by children),
    when that beats what its own cache has.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import torch

GROWTH = 256  # tokens; buffers grow in steps so that decoding does not reallocate every token
MIN_SHARED_PREFIX = 16  # tokens; shorter common prefixes are not worth a lookup and a copy
BLOCK = 16  # tokens per block of the prefix index
EVICTION_MODES = ("drop", "compress")


@dataclass
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device = torch.device("cpu")

    @property
    def bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


class SequenceKV:
    """Keys and values for one context: buf[layer, 0=key/1=value, head, position, dim]."""

    def __init__(self, shape: KVShape, capacity: int = GROWTH) -> None:
        self.shape = shape
        self.buf = self._alloc(capacity)
        self.token_ids: list[int] = []  # tokens whose keys/values are stored, position by position
        self.packed: torch.Tensor | None = None  # the compressed copy while evicted by "compress"
        self.last_used = 0  # pool clock tick of the last step that used it
        self.slot: int | None = None  # its seat in the DecodeSlab while `buf` is a view of it
        # Chain hash of each full BLOCK of token_ids, as indexed by the pool (hash i covers
        # tokens [0, (i + 1) * BLOCK)); truncate and drop keep it in step with token_ids.
        self.block_hashes: list[int] = []

    def _alloc(self, tokens: int) -> torch.Tensor:
        s = self.shape
        return torch.empty(s.layers, 2, s.kv_heads, _round_up(tokens), s.head_dim, dtype=s.dtype, device=s.device)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def capacity(self) -> int:
        return self.buf.shape[3] if self.buf.dim() == 5 else 0

    @property
    def nbytes(self) -> int:
        if self.slot is not None:
            # A seat is as long as the slab's longest; this cache uses what it stores.
            return _round_up(self.length) * self.shape.bytes_per_token
        packed = self.packed.numel() * self.packed.element_size() if self.packed is not None else 0
        return self.buf.numel() * self.buf.element_size() + packed

    @property
    def resident(self) -> bool:
        return self.packed is None

    def reserve(self, total_tokens: int) -> None:
        """Make room for `total_tokens` positions, keeping what is stored."""
        self.restore()
        if total_tokens <= self.capacity:
            return
        self.move_to(self._alloc(max(total_tokens, self.capacity * 2)))

    def move_to(self, buf: torch.Tensor) -> None:
        """Continue in `buf` (its own memory, or a seat in the slab), keeping what is stored."""
        if self.length:
            buf[:, :, :, : self.length] = self.buf[:, :, :, : self.length]
        self.buf = buf
        self.slot = None

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (their tokens changed, or the cache was dropped)."""
        del self.token_ids[length:]
        del self.block_hashes[length // BLOCK :]

    def common_prefix(self, token_ids: list[int]) -> int:
        """How many leading positions of `token_ids` are already stored and can be reused."""
        stored = self.token_ids
        n = min(len(token_ids), len(stored))
        i = 0
        while i < n and stored[i] == token_ids[i]:
            i += 1
        return i

    def copy_prefix_from(self, other: "SequenceKV", length: int) -> None:
        """Take the first `length` positions from another (resident) cache."""
        self.reserve(length)
        self.buf[:, :, :, :length] = other.buf[:, :, :, :length]
        self.token_ids = list(other.token_ids[:length])
        self.block_hashes = []  # the pool indexes them anew, as this cache's own

    # -- eviction ------------------------------------------------------------------------

    def drop(self) -> None:
        self.token_ids = []
        self.block_hashes = []
        self.packed = None
        self.buf = self.buf.new_empty((0,))
        self.slot = None

    def compress(self) -> None:
        """Keep a bfloat16 copy of the stored positions and free the full-precision buffer."""
        if self.packed is not None:
            return
        self.packed = self.buf[:, :, :, : self.length].to(torch.bfloat16)
        self.buf = self.buf.new_empty((0,))
        self.slot = None

    def restore(self) -> None:
        """Bring a compressed cache back to full precision (before it is used again)."""
        if self.packed is None:
            return
        packed, self.packed = self.packed, None
        self.buf = self._alloc(packed.shape[3])
        self.slot = None
        self.buf[:, :, :, : packed.shape[3]] = packed.to(self.shape.dtype)


class DecodeSlab:
    """Seats for the caches of decoding sequences, side by side in one tensor, so that a decode
    step stores every new key/value with one indexed write and attends with one batched call
    per layer instead of one call per sequence (see `attention.DecodeBatch`).

    data[layer, 0=key/1=value, slot, head, position, dim]. A seated cache's `buf` is a view of
    its slot, so every other use of the cache (prefill chunks, prefix copies, eviction) works
    unchanged. Seats are kept between steps and reclaimed lazily, least recently used first,
    so a process that blocks briefly in a tool resumes in place. Seating and growth happen
    between forward passes, on the thread that owns the caches."""

    def __init__(self, shape: KVShape, slots: int, max_tokens: int) -> None:
        self.shape = shape
        self.max_tokens = _round_up(max_tokens)  # longer contexts decode outside the slab
        self.data = self._alloc(slots, GROWTH)
        self._owners: list[weakref.ref[SequenceKV] | None] = [None] * slots
        # Positions of each seat known to hold finite numbers. A step reads every seat up to
        # the longest context in it, masked; a masked NaN from uninitialised memory would still
        # poison the softmax, so `finite` zeroes what is read and was never written.
        self._finite = [0] * slots

    def _alloc(self, slots: int, tokens: int) -> torch.Tensor:
        s = self.shape
        return torch.empty(s.layers, 2, slots, s.kv_heads, tokens, s.head_dim, dtype=s.dtype, device=s.device)

    @property
    def slots(self) -> int:
        return self.data.shape[2]

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    def owner(self, slot: int) -> SequenceKV | None:
        ref = self._owners[slot]
        kv = ref() if ref is not None else None
        return kv if kv is not None and kv.slot == slot else None

    def seat(self, caches: list[SequenceKV], need: list[int]) -> bool:
        """Seat every cache of this decode step, with room for need[i] positions. False (and
        nothing changed) when they cannot all be seated: too many, or a context too long."""
        if max(need, default=0) > self.max_tokens:
            return False
        owners = self._seated()
        longest = max(need + [kv.length for kv in owners if kv is not None])
        if longest > self.capacity or len(caches) > self.slots:
            self._resize(min(max(longest, self.capacity * 2), self.max_tokens), max(len(caches), self.slots))
            owners = self._seated()
        elif self.capacity > GROWTH and self.capacity >= 4 * longest:
            # The long contexts that grew it are gone: give the memory back.
            self._resize(2 * longest, self.slots)
            owners = self._seated()
        wanted = {id(kv) for kv in caches}
        free = [i for i, owner in enumerate(owners) if owner is None]
        # Reclaim the seats of caches not in this step, least recently used first.
        taken = sorted(
            (i for i, owner in enumerate(owners) if owner is not None and id(owner) not in wanted),
            key=lambda i: owners[i].last_used,  # type: ignore[union-attr]
        )
        for kv in caches:
            if kv.slot is not None and owners[kv.slot] is kv:
                continue
            if free:
                slot = free.pop(0)  # the lowest: a step attends seats 0..max, so keep them packed
            else:
                slot = taken.pop(0)
                self._unseat(owners[slot])  # type: ignore[arg-type]
            kv.restore()
            kv.move_to(self.data[:, :, slot])
            kv.slot = slot
            self._owners[slot] = weakref.ref(kv)
            self._finite[slot] = max(self._finite[slot], kv.length)
        return True

    def _seated(self) -> list[SequenceKV | None]:
        """The cache in each seat, or None."""
        return [self.owner(i) for i in range(self.slots)]

    def finite(self, seats: int, length: int) -> None:
        """Make positions [0, length) of seats [0, seats) safe to read. What a seat's owner
        stores is never touched: it may have been written outside the slab's batch (a prompt
        chunk of a seated process goes through its `buf`, a view of the seat)."""
        if min(self._finite[:seats]) >= length:
            return  # the common case, once the seats have grown past this length
        for slot in range(seats):
            owner = self.owner(slot)
            done = max(self._finite[slot], owner.length if owner is not None else 0)
            if done < length:
                self.data[:, :, slot, :, done:length] = 0
            self._finite[slot] = max(done, length)

    def _unseat(self, kv: SequenceKV) -> None:
        kv.move_to(kv._alloc(max(kv.length, 1)))

    def _resize(self, tokens: int, slots: int) -> None:
        """A new tensor of `slots` seats x `tokens` positions (rounded up); seated caches move."""
        resized = self._alloc(slots, _round_up(tokens))
        self._owners += [None] * (slots - self.slots)
        self._finite = [0] * slots
        for slot, kv in enumerate(self._seated()):
            if kv is not None:
                kv.move_to(resized[:, :, slot])  # copies only the positions it stores
                kv.slot = slot
                self._finite[slot] = kv.length
        self.data = resized


@dataclass
class KVStats:
    evictions: int = 0  # caches dropped or compressed to meet the budget
    shared_prefix_tokens: int = 0  # positions copied from another cache instead of computed
    # The prefix cache, counted per submitted prompt:
    lookups: int = 0  # prompts submitted
    hits: int = 0  # prompts that reused at least one position (their own cache, adopted or copied)
    prompt_tokens: int = 0  # positions those prompts needed before their last token
    reused_tokens: int = 0  # of which were already computed (not prefilled)
    retired: int = 0  # caches of exited processes kept for reuse
    adopted: int = 0  # retired caches taken over by a new context
    adopted_tokens: int = 0  # positions those caches held

    @property
    def hit_rate(self) -> float:
        """Share of submitted prompts that reused cached positions."""
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def token_hit_rate(self) -> float:
        """Share of prompt positions that were not prefilled again."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class KVPool:
    """Every SequenceKV, the budget they share, and the prefix cache: an index of every cache's
    tokens by block, and the retired caches of exited processes."""

    def __init__(self, shape: KVShape, budget_bytes: int, mode: str = "drop") -> None:
        if mode not in EVICTION_MODES:
            raise ValueError(f"unknown KV eviction mode {mode!r}; choose one of {', '.join(EVICTION_MODES)}")
        self.shape = shape
        self.budget_bytes = budget_bytes
        self.mode = mode
        self.stats = KVStats()
        self._caches: weakref.WeakSet[SequenceKV] = weakref.WeakSet()  # freed with their process
        self._clock = itertools.count(1)
        # The prefix index: block chain hash -> the caches holding that block, by id. Entries
        # of caches that changed or died are skipped when read and swept when they pile up.
        self._holders: dict[int, dict[int, weakref.ref[SequenceKV]]] = {}
        self._index_entries = 0
        self._retired: dict[int, SequenceKV] = {}  # exited processes' caches, held here alone

    def new(self) -> SequenceKV:
        kv = SequenceKV(self.shape)
        self._caches.add(kv)
        return kv

    def touch(self, kv: SequenceKV) -> None:
        """`kv` ran in the step that just ended: it is the most recently used, and the blocks
        it completed join the index."""
        kv.last_used = next(self._clock)
        self._index(kv)

    def used_bytes(self) -> int:
        return sum(kv.nbytes for kv in list(self._caches))

    @property
    def retired_count(self) -> int:
        return len(self._retired)

    def retired_bytes(self) -> int:
        return sum(kv.nbytes for kv in self._retired.values())

    # -- the prefix index ----------------------------------------------------------------

    def _index(self, kv: SequenceKV) -> None:
        tokens, hashes = kv.token_ids, kv.block_hashes
        full = len(tokens) // BLOCK
        if len(hashes) >= full:
            return
        ref = weakref.ref(kv)
        prev = hashes[-1] if hashes else 0
        for i in range(len(hashes), full):
            prev = hash((prev, *tokens[i * BLOCK : (i + 1) * BLOCK]))
            hashes.append(prev)
            self._holders.setdefault(prev, {})[id(kv)] = ref
            self._index_entries += 1
        if self._index_entries > 4 * max(1024, sum(len(c.block_hashes) for c in list(self._caches))):
            self._sweep()

    def _sweep(self) -> None:
        """Rebuild the index from the caches that exist now (stale entries pile up as caches
        are truncated, dropped and freed)."""
        self._holders, self._index_entries = {}, 0
        for kv in list(self._caches):
            ref = weakref.ref(kv)
            for h in kv.block_hashes:
                self._holders.setdefault(h, {})[id(kv)] = ref
                self._index_entries += 1

    def lookup(self, token_ids: list[int], exclude: SequenceKV | None = None) -> tuple[SequenceKV | None, int]:
        """The resident cache (other than `exclude`) that holds the longest prefix of
        `token_ids`, and that prefix's length. Walks the block chain of `token_ids` while some
        cache holds each block, then extends the match token by token past the last block."""
        candidates: list[SequenceKV] = []
        prev, depth = 0, 0
        for i in range(len(token_ids) // BLOCK):
            prev = hash((prev, *token_ids[i * BLOCK : (i + 1) * BLOCK]))
            found = [
                kv
                for kv in (ref() for ref in self._holders.get(prev, {}).values())
                if kv is not None and kv is not exclude and kv.resident
                and len(kv.block_hashes) > i and kv.block_hashes[i] == prev
            ]
            if not found:
                break
            candidates, depth = found, i + 1
        best, best_len = None, 0
        start = depth * BLOCK
        for kv in candidates:
            if kv.token_ids[:start] != token_ids[:start]:
                continue  # a hash collision: never trust a hash alone with a model's state
            n = start + _common(kv.token_ids, token_ids, start)
            if n > best_len or (n == best_len and best is not None and kv.last_used > best.last_used):
                best, best_len = kv, n
        return best, best_len

    # -- processes come and go -----------------------------------------------------------

    def retire(self, kv: SequenceKV) -> None:
        """Keep the cache of an exited process for whoever starts with the same tokens. It
        stays under the budget with everything else and is evicted like any idle cache."""
        if not kv.resident or kv.length < MIN_SHARED_PREFIX:
            kv.drop()
            return
        self._index(kv)
        self._retired[id(kv)] = kv
        self.stats.retired += 1

    def acquire(self, token_ids: list[int]) -> SequenceKV:
        """A cache for a new context of `token_ids`: a retired cache whose whole content starts
        them is adopted as it is (no copy); otherwise a fresh one."""
        kv, n = self.lookup(token_ids)
        if kv is not None and id(kv) in self._retired and n == kv.length:
            del self._retired[id(kv)]
            self.stats.adopted += 1
            self.stats.adopted_tokens += n
            return kv
        return self.new()

    def share_prefix(self, kv: SequenceKV, token_ids: list[int]) -> int:
        """Extend `kv` with the longest prefix of `token_ids` that another resident cache holds
        (a live process's or a retired one), if that beats what `kv` already has. Returns how
        many positions `kv` now reuses."""
        have = kv.common_prefix(token_ids)
        best, best_len = self.lookup(token_ids, exclude=kv)
        if best is None or best_len - have < MIN_SHARED_PREFIX:
            return have
        kv.copy_prefix_from(best, best_len)
        self.stats.shared_prefix_tokens += best_len - have
        return best_len

    def note_prompt(self, needed: int, reused: int) -> None:
        """Count one submitted prompt: `needed` positions before its last token, `reused` of
        them already computed."""
        self.stats.lookups += 1
        self.stats.prompt_tokens += needed
        self.stats.reused_tokens += reused
        self.stats.hits += reused > 0

    def enforce(self, busy: set[int]) -> None:
        """Evict least recently used caches (not those whose id is in `busy`) until within
        budget. A retired cache is simply forgotten; a live process's is dropped or compressed."""
        used = self.used_bytes()
        if used <= self.budget_bytes:
            return
        idle = sorted((kv for kv in list(self._caches) if id(kv) not in busy), key=lambda kv: kv.last_used)
        for kv in idle:
            if used <= self.budget_bytes:
                break
            before = kv.nbytes
            if self._retired.pop(id(kv), None) is not None:
                kv.drop()
            elif self.mode == "compress" and kv.resident and kv.length > 0:
                kv.compress()
            else:
                kv.drop()  # a compressed cache that still does not fit is dropped too
            used -= before - kv.nbytes
            self.stats.evictions += 1


def _common(a: list[int], b: list[int], start: int) -> int:
    """How many positions from `start` on `a` and `b` agree."""
    n = min(len(a), len(b)) - start
    i = 0
    while i < n and a[start + i] == b[start + i]:
        i += 1
    return i


def _round_up(n: int) -> int:
    return max(GROWTH, (n + GROWTH - 1) // GROWTH * GROWTH)
