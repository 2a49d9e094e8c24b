"""A lean forward pass for llama-architecture models (Llama, SmolLM, Mistral, Qwen2).

transformers' own forward spends much of a small model's decode step in module plumbing;
this one runs the same math on the same weights as plain tensor code over the flat token
batch: RMSNorm, rotary, projections (gate and up fused into one matmul), attention through
`attention.attend`, and logits only for the rows that are sampled. transformers remains the
loader, and the fallback for any architecture not listed here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from llmos.kernel.attention import DecodeBatch, Segment, attend

SUPPORTED = {"llama", "mistral", "qwen2"}


def supports(model: Any) -> bool:
    cfg = model.config
    if cfg.model_type not in SUPPORTED or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False  # windowed attention is not implemented here
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return rope.get("rope_type", "default") != "dynamic"


class LlamaRunner:
    def __init__(self, model: Any) -> None:
        self.model = model
        inner = model.model
        cfg = model.config
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.q_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.layers = [_fuse_mlp(layer) for layer in inner.layers]

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        segments: list[Segment],
        keep: list[int],
        batch: DecodeBatch | None = None,
    ) -> torch.Tensor:
        """ids, positions: [N]. Returns logits [len(keep), vocab] for the rows in `keep`."""
        x = self.embed(ids)
        cos, sin = self.rotary(x, positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [N, 1, dim], broadcast over heads
        n = ids.shape[0]
        for index, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(n, self.q_heads, self.head_dim)
            k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(n, self.kv_heads, self.head_dim)
            v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(n, self.kv_heads, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            out = attend(index, q, k, v, segments, self.scale, batch).reshape(n, -1)
            x = x + F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
            h = layer.post_attention_layernorm(x)
            gate_up = F.linear(h, layer.gate_up_weight)
            gate, up = gate_up.chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(F.silu(gate) * up)
        x = self.norm(x[keep])
        return self.lm_head(x)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _fuse_mlp(layer: Any) -> Any:
    """Give gate and up one weight tensor (one matmul), and make the original modules views of
    it, so transformers' forward (and `generate`) keep working with no second copy."""
    mlp = layer.mlp
    if getattr(layer, "gate_up_weight", None) is None:
        if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
            raise ValueError("biased MLP projections are not supported by the lean runner")
        fused = torch.cat([mlp.gate_proj.weight.data, mlp.up_proj.weight.data], dim=0)
        size = mlp.gate_proj.weight.shape[0]
        mlp.gate_proj.weight.data = fused[:size]
        mlp.up_proj.weight.data = fused[size:]
        layer.gate_up_weight = fused
    return layer
