"""Our C kernels (native.py): matmul.c's projections and attention.c's decode attention give
torch's results, a row's result independent of the other rows; the real model's answers with
them are checked in test_backend.py (greedy equal to transformers', batched equal to alone)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmos.kernel.model import matmul, native
from llmos.kernel.model.linear import PanelLinear, make_linear

pytestmark = pytest.mark.skipif(not matmul.available(), reason="needs x86 AVX2 and a C compiler")


@pytest.mark.parametrize("dtype,tolerance,rounding", [(torch.float32, 1e-5, 1e-4), (torch.float16, 1e-3, 1e-4), (torch.int8, 1e-2, 2e-3)])
def test_products_match_torch_for_every_shape_and_row_count(dtype, tolerance, rounding):
    """`rounding`: int8 multiplies each row of x rounded to int16 (a 2^-15 step of its peak)."""
    torch.manual_seed(0)
    # Output counts off the 16-wide tile, inputs across the 256-wide block, row counts across
    # the 6-row tile and the 192-row pass.
    for n, k in ((960, 576), (577, 1536), (5, 7), (33, 300)):
        w, bias = torch.randn(n, k) * 0.05, torch.randn(n)
        packed = matmul.pack(w, dtype)
        stored = matmul.unpack(packed)
        assert (stored - w).norm() / w.norm() < tolerance
        for m in (1, 5, 6, 7, 13, 200):
            x, residual = torch.randn(m, k), torch.randn(m, n)
            expected = F.linear(x, stored, bias) + residual
            assert torch.allclose(matmul.matmul(x, packed, bias, residual), expected, rtol=1e-4, atol=rounding)
            assert torch.allclose(matmul.matmul(x, packed), x @ stored.T, rtol=1e-4, atol=rounding)


def test_a_rows_result_does_not_depend_on_the_other_rows():
    torch.manual_seed(1)
    x = torch.randn(300, 1000)
    for dtype in (torch.float32, torch.float16, torch.int8):
        packed = matmul.pack(torch.randn(100, 1000), dtype)
        together = matmul.matmul(x, packed)
        for row in (0, 1, 3, 5, 6, 191, 192, 299):
            assert torch.equal(matmul.matmul(x[row : row + 1], packed)[0], together[row])
            assert torch.equal(matmul.matmul(x[row : row + 2], packed)[0], together[row])
    packed = matmul.pack(torch.randn(100, 1000), torch.float32)
    # A strided view (a chunk of a wider tensor) reads the same rows.
    wide = torch.randn(7, 2000)
    assert torch.equal(matmul.matmul(wide[:, :1000], packed), matmul.matmul(wide[:, :1000].contiguous(), packed))


def test_wrong_shapes_are_refused():
    packed = matmul.pack(torch.randn(16, 32), torch.float32)
    with pytest.raises(ValueError, match="takes 32 inputs"):
        matmul.matmul(torch.randn(2, 31), packed)
    assert matmul.matmul(torch.randn(0, 32), packed).shape == (0, 16)


def test_linear_modes_use_the_panels_and_tied_rows_come_back():
    torch.manual_seed(2)
    w = torch.randn(64, 96)
    for mode in ("fp32", "fp16", "int8"):
        layer = make_linear(w, None, mode, torch.device("cpu"))
        assert isinstance(layer, PanelLinear)
    int8 = make_linear(w, None, "int8", torch.device("cpu"))
    ids = torch.tensor([0, 7, 8, 63])
    assert int8.quantized and torch.allclose(int8.rows(ids, torch.float32), w[ids], atol=w.abs().max().item() / 127)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("LLMOS_NATIVE", "off")
    native.library.cache_clear()
    try:
        assert not matmul.available()
        assert not isinstance(make_linear(torch.randn(16, 32), None, "fp32", torch.device("cpu")), PanelLinear)
    finally:
        monkeypatch.delenv("LLMOS_NATIVE")
        native.library.cache_clear()
    assert matmul.available()


def test_decode_attention_stores_then_matches_torch_and_reads_only_its_own_length():
    from llmos.kernel.model.attention import decode_attention

    torch.manual_seed(3)
    seats, kv_heads, rep, dim, capacity = 5, 3, 3, 64, 40
    keys, values = torch.randn(seats, kv_heads, capacity, dim), torch.randn(seats, kv_heads, capacity, dim)
    slots, lengths = torch.tensor([4, 0, 2]), torch.tensor([1, 17, 40], dtype=torch.int32)
    # q and the new key/value as views of one projection output, rows strided.
    projection = torch.randn(3, (kv_heads * rep + 2 * kv_heads) * dim + 5)
    q = projection[:, : kv_heads * rep * dim].view(3, kv_heads * rep, dim)
    new_kv = projection[:, kv_heads * rep * dim : -5].view(3, 2, kv_heads, dim)
    before = keys.clone()
    out = decode_attention(q, new_kv, keys, values, slots, lengths, 0.125)
    for b, (slot, length) in enumerate(zip(slots.tolist(), lengths.tolist())):
        assert torch.equal(keys[slot, :, length - 1], new_kv[b, 0]) and torch.equal(values[slot, :, length - 1], new_kv[b, 1])
        grouped = q[b].reshape(1, kv_heads, rep, dim)
        expected = F.scaled_dot_product_attention(grouped, keys[slot : slot + 1, :, :length], values[slot : slot + 1, :, :length], scale=0.125)
        assert torch.allclose(out[b], expected.view(kv_heads * rep, dim), atol=1e-5)
    changed = (keys != before).any(dim=-1).nonzero().tolist()
    assert sorted(changed) == sorted([s, h, n - 1] for s, n in zip(slots.tolist(), lengths.tolist()) for h in range(kv_heads))
    # What lies past a row's length is never read (NaNs there change nothing), and a row's
    # result does not depend on the other rows.
    keys[4, :, 1:], values[0, :, 17:] = float("nan"), float("nan")
    assert torch.equal(decode_attention(q, new_kv, keys, values, slots, lengths, 0.125), out)
    assert torch.equal(decode_attention(q[1:2], new_kv[1:2], keys, values, slots[1:2], lengths[1:2], 0.125)[0], out[1])
    # Long rows (scores past the stack buffer) and large score ranges (e^x far below 1).
    long_keys, long_values = torch.randn(1, 1, 9000, 8) * 30, torch.randn(1, 1, 9000, 8)
    q1, kv1 = torch.randn(1, 2, 8), torch.randn(1, 2, 1, 8)
    got = decode_attention(q1, kv1, long_keys, long_values, torch.zeros(1, dtype=torch.long), torch.tensor([9000], dtype=torch.int32), 1.0)
    expected = F.scaled_dot_product_attention(q1.view(1, 1, 2, 8), long_keys, long_values, scale=1.0)
    assert torch.allclose(got, expected.view(1, 2, 8), atol=1e-4)


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_a_decode_step_in_one_call_equals_the_per_op_path(tiny_backend, real_backend, which):
    """layer.c runs a step of seated decoders through every layer at once; llama.py's per-op
    path runs the same kernels one by one: the logits must be the same bits."""
    from llmos.kernel.model.backend import WorkItem

    backend = tiny_backend if which == "tiny" else real_backend
    runner = backend.runner
    assert runner.stack is not None
    kvs = [backend.new_kv() for _ in range(3)]
    prompts = ["hello there", "a longer prompt than the other two", "x"]
    logits = backend.step([WorkItem(kv, backend.encode(p), True) for kv, p in zip(kvs, prompts)])
    tokens = logits.argmax(-1).tolist()
    for _ in range(3):
        plan = backend.plan([WorkItem(kv, [t], True) for kv, t in zip(kvs, tokens)])
        assert plan.batch is not None and not plan.segments and plan.batch.mask is None
        ids, positions = torch.tensor(plan.ids), torch.tensor(plan.positions)
        with torch.inference_mode():
            # Both write the same keys and values at the same positions: the second run sees
            # the cache the first one left, as it would have been.
            one_call = runner.forward(ids, positions, plan.segments, plan.keep, plan.batch)
            stack, runner.stack = runner.stack, None
            try:
                per_op = runner.forward(ids, positions, plan.segments, plan.keep, plan.batch)
            finally:
                runner.stack = stack
        assert torch.equal(one_call, per_op)
        for item in plan.items:
            item.kv.token_ids.extend(item.tokens)
        tokens = one_call.argmax(-1).tolist()


@pytest.mark.skipif(not native._cpu_has("avx512f", "avx512bw", "avx512_vnni"), reason="needs AVX-512 (BW, VNNI)")
def test_the_avx512_and_avx2_builds_give_the_same_bits(monkeypatch):
    """matmul.c's 16-wide AVX-512 tiles keep each output's sum the sequence the 8-wide AVX2 ones
    use: a machine's answers do not depend on which of the two it has."""
    torch.manual_seed(3)
    w, x = torch.randn(577, 1000), torch.randn(13, 1000)
    results = []
    for extra in ([], ["-mno-avx512f"]):
        monkeypatch.setattr(native, "FLAGS", native.FLAGS + extra)
        native.library.cache_clear()
        results.append([matmul.matmul(x, matmul.pack(w, d)) for d in (torch.float32, torch.float16, torch.int8)])
        assert matmul.panel_width() == (16 if not extra else 8)
    monkeypatch.undo()
    native.library.cache_clear()
    for wide, narrow in zip(*results):
        assert torch.equal(wide, narrow)


def test_the_greedy_head_screen_keeps_the_fp32_argmax_and_its_values():
    """matmul.HeadScreen: outputs screened with an fp16 copy, the ones that could be largest
    summed again in fp32. Near ties (outputs apart by less than fp16's rounding) and exact ties
    (duplicate rows: the first wins) must come out as the full fp32 head's."""
    torch.manual_seed(4)
    w = torch.randn(3000, 576) * 0.08
    w[11] = w[10] + 1e-6 * torch.randn(576)  # apart by far less than fp16 resolves
    w[20] = w[10]  # an exact tie, after 10
    exact = matmul.pack(w, torch.float32)
    screen = matmul.HeadScreen.of(exact)
    x = torch.randn(40, 576) * 2
    x[:20] += 20 * w[10] / w[10].norm()  # these rows' largest is among 10, 11, 20
    full = matmul.matmul(x, exact)
    screened = screen.argmax_logits(x)
    assert torch.equal(screened.argmax(dim=1), full.argmax(dim=1))
    kept = screened > float("-inf")
    assert torch.equal(screened[kept], full[kept])  # bit for bit where kept
    assert kept.sum(dim=1).float().mean() < 10  # and few are kept
    assert kept[:20, 10].all() and kept[:20, 11].all() and kept[:20, 20].all()
    # Banned outputs (a request's end tokens) are never picked: the pick is the best of the rest.
    banned = screen.argmax_logits(x, banned=(10, 11))
    assert torch.equal(banned.argmax(dim=1), full.index_fill(1, torch.tensor([10, 11]), float("-inf")).argmax(dim=1))
    assert (banned[:, [10, 11]] == float("-inf")).all() and (banned[:20].argmax(dim=1) == 20).all()
