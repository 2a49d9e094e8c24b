"""A lean forward pass for llama-architecture models (Llama, SmolLM, Mistral, Qwen2).

transformers' own forward spends much of a small model's decode step in module plumbing;
this one runs the same math on the same weights as plain tensor code over the flat token
batch, with as few tensor operations per layer as the math allows, since at one or a few
tokens a step each operation's fixed cost (~5-10 us) adds up to as much as the matmuls:
  - RMSNorm, rotary embedding and SiLU(gate) * up are one call each (fused.py: our C kernel
    on the CPU in fp32, torch's ops elsewhere);
  - q, k and v come from one matmul, gate and up from another, and the residual adds ride on
    the o and down projections (`Linear.add`: in the matmul's own output loop);
  - rotary embedding reads cos/sin from a table made once (transformers' own rotary module
    evaluated at every position) with the sign of rotate_half folded into sin, and is applied
    to q and k together, in place in the projection's output, so keys and values need no copy
    before they are stored;
  - logits only for the rows that are sampled.
Weights are stored in one of the formats of `linear.py` (--weights). transformers remains the
loader, and the fallback for any architecture not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmos.kernel.model import fused, matmul
from llmos.kernel.model.attention import DecodeBatch, Segment, attend
from llmos.kernel.model.linear import Linear, PanelLinear, compute_dtype, make_linear

SUPPORTED = {"llama", "mistral", "qwen2"}


def supports(model: Any) -> bool:
    cfg = model.config
    if cfg.model_type not in SUPPORTED or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False  # windowed attention is not implemented here
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return rope.get("rope_type", "default") != "dynamic"


@dataclass
class Layer:
    input_norm: torch.Tensor  # RMSNorm weights
    qkv: Linear  # q, k and v projections in one matmul
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear  # the MLP's gate and up projections in one matmul
    down: Linear


# w8a8 (int8 activations): SmoothQuant (Xiao et al., 2023) moves part of each input channel's
# range from the activations into the weights, W' = W diag(s), X' = X diag(1/s), with
# s = max|X|^alpha / max|W|^(1 - alpha) per input channel, measured on these prompts at load.
# 1/s is folded into what produces X: the RMSNorm weights (q/k/v, gate/up), the up projection
# (down) and the value projection (o), so the model computes the same function in fp32.
SMOOTHING_ALPHA = 0.65
HEAD_MODE = {"int4": "int8", "w8a8": "fp16"}
CALIBRATION = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short poem about autumn leaves.",
    "What were the main causes of the French Revolution?",
    "List five unusual uses for a paperclip.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n\nExplain this code.",
    "Translate 'good morning, how are you?' into Spanish and French.",
]


class LlamaRunner:
    def __init__(
        self,
        model: Any,
        weights: str = "fp32",
        device: torch.device | str = "cpu",
        calibration: list[list[int]] | None = None,
    ) -> None:
        self.weights = weights
        self.device = torch.device(device)
        self.dtype = compute_dtype(weights)
        inner = model.model
        cfg = model.config
        self.hidden = cfg.hidden_size
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.q_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        # The vocabulary head is where rounding shows most (it ranks 49k candidates): int4 keeps
        # it in int8, w8a8 in fp16.
        self.lm_head = self._linear(model.lm_head.weight, model.lm_head.bias, HEAD_MODE.get(weights, weights))
        # Greedy rows need only their argmax: an fp32 head on our kernels screens with an fp16
        # copy (56 MB more for SmolLM2-135M, half the head's bytes read per step; exact).
        head = self.lm_head
        self.head_screen = (
            matmul.HeadScreen.of(head.panels)
            if isinstance(head, PanelLinear) and head.panels.panels.dtype == torch.float32 and head.bias is None
            else None
        )
        embedding = inner.embed_tokens.weight
        tied = embedding.data_ptr() == model.lm_head.weight.data_ptr()
        if tied and self.lm_head.quantized:
            self.embedding: torch.Tensor | None = None  # rows come from the quantized head
        else:
            self.embedding = embedding.detach().to(self.device, self.dtype)
            if weights != "fp32":  # its own copy: transformers' weights (a file mapping) can then go
                self.embedding = self.embedding.clone()
        self.norm = self._vector(inner.norm.weight)
        self.cos, self.sin = self._rotary_tables(inner.rotary_emb, int(getattr(cfg, "max_position_embeddings", 2048)))
        smoothing = self._smoothing(model, calibration or []) if weights == "w8a8" else None
        self.layers = [self._layer(layer, smoothing[i] if smoothing else None) for i, layer in enumerate(inner.layers)]
        self.stack = fused.DecodeStack(self) if fused.DecodeStack.fits(self) else None

    def _linear(self, weight: torch.Tensor, bias: torch.Tensor | None = None, mode: str | None = None) -> Linear:
        return make_linear(weight, bias, mode or self.weights, self.device)

    def _vector(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().to(self.device, self.dtype)

    def _rotary_tables(self, rotary: Any, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [position, head_dim] from transformers' own rotary module (its scaling
        included), with rotate_half's sign folded into sin: rotate_half(x) * sin equals
        swap_halves(x) * signed_sin, so applying it needs no negation."""
        probe = torch.zeros(1, dtype=torch.float32)
        cos, sin = rotary(probe, torch.arange(positions).unsqueeze(0))
        cos, sin = cos[0].float(), sin[0].float()
        half = self.head_dim // 2
        sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return cos.to(self.device, self.dtype).contiguous(), sin.to(self.device, self.dtype).contiguous()

    def _layer(self, layer: Any, smooth: dict[str, torch.Tensor] | None = None) -> Layer:
        attn, mlp = layer.self_attn, layer.mlp
        if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
            raise ValueError("biased MLP projections are not supported by the lean runner")
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        biases = [p.bias for p in projections]
        if any(b is not None for b in biases):
            bias = torch.cat([b if b is not None else p.weight.new_zeros(p.weight.shape[0]) for p, b in zip(projections, biases)])
        else:
            bias = None
        qkv = torch.cat([p.weight for p in projections]).detach()
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        o, down = attn.o_proj.weight.detach(), mlp.down_proj.weight.detach()
        input_norm, post_norm = layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()
        if smooth is not None:
            s = smooth["qkv"]
            input_norm, qkv = input_norm / s, qkv * s
            s = smooth["gate_up"]
            post_norm, gate_up = post_norm / s, gate_up * s
            s = smooth["down"]  # down's input is silu(gate) * up: divide up's rows
            gate_up = torch.cat([gate_up[: s.shape[0]], gate_up[s.shape[0] :] / s[:, None]])
            down = down * s
            s = smooth["o"]  # o's input is attention over v: divide v's rows (one factor per kv head and dim)
            q_rows, kv_rows = self.q_heads * self.head_dim, self.kv_heads * self.head_dim
            v_scale = s.view(self.kv_heads, -1, self.head_dim)[:, 0].reshape(-1)
            qkv = torch.cat([qkv[: q_rows + kv_rows], qkv[q_rows + kv_rows :] / v_scale[:, None]])
            if bias is not None:
                bias = torch.cat([bias[: q_rows + kv_rows], bias[q_rows + kv_rows :] / v_scale])
            o = o * s
        return Layer(
            input_norm=self._vector(input_norm),
            qkv=self._linear(qkv, bias),
            o=self._linear(o, attn.o_proj.bias),
            post_norm=self._vector(post_norm),
            gate_up=self._linear(gate_up),
            down=self._linear(down, mlp.down_proj.bias),
        )

    def _smoothing(self, model: Any, calibration: list[list[int]]) -> list[dict[str, torch.Tensor]]:
        """SmoothQuant's factors per layer for the inputs of q/k/v, o, gate/up and down: the
        largest magnitude of each input channel over the calibration prompts (transformers'
        forward, fp32), balanced against the largest weight that channel meets."""
        if not calibration:
            raise ValueError("w8a8 needs calibration prompts")
        peaks: dict[tuple[int, str], torch.Tensor] = {}

        def record(key: tuple[int, str]) -> Any:
            def hook(module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
                peak = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
                peaks[key] = torch.maximum(peaks[key], peak) if key in peaks else peak
            return hook

        hooks = []
        for i, layer in enumerate(model.model.layers):
            for name, module in (("qkv", layer.self_attn.q_proj), ("o", layer.self_attn.o_proj),
                                 ("gate_up", layer.mlp.gate_proj), ("down", layer.mlp.down_proj)):
                hooks.append(module.register_forward_pre_hook(record((i, name))))
        attention_name = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():  # the prompts one after another: one forward pass
                model(input_ids=torch.tensor([[t for ids in calibration for t in ids]]), use_cache=False)
        finally:
            model.set_attn_implementation(attention_name)
            for hook in hooks:
                hook.remove()

        def factor(peak: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
            weight_peak = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
            alpha = SMOOTHING_ALPHA
            return (peak.clamp(min=1e-5) ** alpha / weight_peak.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

        factors = []
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            o = factor(peaks[(i, "o")], attn.o_proj.weight)
            # o's input channels of one kv head's query heads come from the same v rows: one factor
            o = o.view(self.kv_heads, -1, self.head_dim).amax(dim=1, keepdim=True).expand(-1, self.q_heads // self.kv_heads, -1)
            factors.append({
                "qkv": factor(peaks[(i, "qkv")], attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight),
                "gate_up": factor(peaks[(i, "gate_up")], mlp.gate_proj.weight, mlp.up_proj.weight),
                "down": factor(peaks[(i, "down")], mlp.down_proj.weight),
                "o": o.reshape(-1),
            })
        return factors

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return self.lm_head.rows(ids, self.dtype)  # type: ignore[attr-defined]
        return F.embedding(ids, self.embedding)

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        segments: list[Segment],
        keep: list[int],
        batch: DecodeBatch | None = None,
        argmax_only: bool = False,
        banned: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """ids, positions: [N]. Returns logits [len(keep), vocab] for the rows in `keep`; with
        `argmax_only`, exact only where they could be a row's largest among the outputs not
        `banned` (-inf elsewhere; `banned` means nothing without `argmax_only`)."""
        n = ids.shape[0]
        heads, kv_heads, dim = self.q_heads, self.kv_heads, self.head_dim
        x = self.embed(ids)
        if self.stack is not None and batch is not None and not segments and batch.mask is None:
            x = self.stack.run(x, positions, batch)  # every row a seated decoder: one call
            return self._head(fused.rms_norm(x[keep], self.norm, self.eps), argmax_only, banned)
        rotary = fused.Rotary(self.cos, self.sin, positions)
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(fused.rms_norm(x, layer.input_norm, self.eps))
            rotary.apply(qkv, heads + kv_heads, dim)  # q and k, side by side in the output, in place
            q = qkv[:, : heads * dim].view(n, heads, dim)
            kv = qkv[:, heads * dim :].view(n, 2, kv_heads, dim)
            out = attend(index, q, kv, segments, self.scale, batch).view(n, heads * dim)
            x = layer.o.add(out, x)
            x = layer.down.add(fused.silu_mul(layer.gate_up(fused.rms_norm(x, layer.post_norm, self.eps))), x)
        return self._head(fused.rms_norm(x[keep], self.norm, self.eps), argmax_only, banned)

    def _head(self, h: torch.Tensor, argmax_only: bool, banned: tuple[int, ...]) -> torch.Tensor:
        if argmax_only and self.head_screen is not None:
            return self.head_screen.argmax_logits(h, banned)
        return self.lm_head(h)
