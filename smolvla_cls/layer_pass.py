"""Our own pass over lerobot's VLM + action-expert layers, with the prefix K/V cache in our hands.

lerobot's `SmolVLMWithExpertModel.forward` changed its cache contract between releases: 0.4.4 takes
`fill_kv_cache=` and a dict per layer, 0.6.1 dropped the flag and uses a transformers `DynamicCache`
that the suffix pass appends to in place (cropped back afterwards), and upstream plans to change it again.
The three passes the CLS model needs (joint training pass, prefix pass that keeps K/V, suffix pass that
reads them) are computed here from the layer weights alone — `input_layernorm`, `self_attn.{q,k,v,o}_proj`,
`post_attention_layernorm`, `mlp`, the final `norm` — so every lerobot version runs the same code.

The cache is a plain dict `{layer: {"key_states": [B,P,KH,D] (post-RoPE), "value_states": [B,P,KH,D]}}`
(the layout the export graphs stack). It is never mutated: the suffix pass concatenates into new tensors.
The maths is SmolVLA's (checked equal to lerobot's own forward in tests/test_layer_pass.py):
- every layer in the prefix pass, and every `self_attn_every_n_layers`-th layer otherwise, is joint
  self-attention over [prefix | suffix] (suffix queries see the cached prefix K/V);
- the other layers are cross-attention: the expert re-projects the cached prefix K/V with its own
  k_proj/v_proj, and its query positions restart at 0;
- RoPE with wavelength 10 000 (lerobot's; the configs' `rope_theta` is not used).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

ROPE_WAVELENGTH = 10_000.0
KVCache = dict[int, dict[str, Tensor]]


def rotate(x: Tensor, positions: Tensor, wavelength: float = ROPE_WAVELENGTH) -> Tensor:
    """Rotary position embedding of x [B,L,H,D] at integer positions [B,L] (half-split layout), in float32."""
    half = x.shape[-1] // 2
    exponents = torch.arange(half, dtype=torch.float32, device=x.device) * (2.0 / x.shape[-1])
    angles = positions.to(torch.float32)[..., None] / (wavelength ** exponents)  # [B,L,half]
    sin, cos = torch.sin(angles)[:, :, None, :], torch.cos(angles)[:, :, None, :]
    xf = x.to(torch.float32)
    first, second = xf[..., :half], xf[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


def _qkv(layer: Any, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normed hidden [B,L,H] -> q, k, v [B,L,heads,D] with the layer's projections."""
    x = layer.input_layernorm(hidden).to(layer.self_attn.q_proj.weight.dtype)
    shape = (*x.shape[:-1], -1, layer.self_attn.head_dim)
    return (layer.self_attn.q_proj(x).view(shape), layer.self_attn.k_proj(x).view(shape),
            layer.self_attn.v_proj(x).view(shape))


def _finish(layer: Any, hidden: Tensor, attended: Tensor) -> Tensor:
    """Output projection + residual, then the MLP block + residual. The residuals are added in place so the
    stream keeps the layer's dtype (a bf16 expert fed float32 embeddings stays bf16), as lerobot does."""
    out = layer.self_attn.o_proj(attended.to(layer.self_attn.o_proj.weight.dtype))
    out += hidden
    mlp = layer.mlp(layer.post_attention_layernorm(out))
    mlp += out
    return mlp


class LayerPass:
    """Runs the layers of one `SmolVLMWithExpertModel` (`model`) with `expert` in the action-expert slot."""

    def __init__(self, model: Any, expert: Any | None = None):
        self.model = model
        text = model.get_vlm_model().text_model
        self.expert = model.lm_expert if expert is None else expert
        self.norms = (text.norm, self.expert.norm)
        self.vlm_layers, self.expert_layers = model.get_model_layers([text, self.expert])
        self.head_dim = model.vlm.config.text_config.head_dim
        self.every_n = model.self_attn_every_n_layers
        self.cross = "cross" in model.attention_mode

    def _is_self_attention(self, index: int, prefix_only: bool) -> bool:
        return prefix_only or not self.cross or (self.every_n > 0 and index % self.every_n == 0)

    def _attend(self, mask: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.model.eager_attention_forward(mask, q.shape[0], self.head_dim, q, k, v)

    def run(self, embeds: list[Tensor | None], mask: Tensor, positions: Tensor, cache: KVCache | None = None,
            keep_cache: bool = False) -> tuple[list[Tensor | None], KVCache | None]:
        """One pass. `embeds` = [prefix or None, suffix or None]; `mask` [B, queries, keys] and `positions`
        [B, queries] cover the streams present (a suffix-only pass's keys are [cached prefix | suffix]).
        `cache`: the prefix K/V to read (suffix-only pass). `keep_cache`: return the prefix K/V (prefix pass).
        Returns ([prefix out, suffix out] after the final norms, the kept cache or None)."""
        prefix, suffix = embeds
        if prefix is None and cache is None:
            raise ValueError("LayerPass.run: a suffix-only pass needs the prefix K/V cache (cache=None)")
        if keep_cache and prefix is None:
            raise ValueError("LayerPass.run: keep_cache=True needs the prefix embeddings (embeds[0] is None)")
        prefix_only = suffix is None
        kept: KVCache = {}
        hidden: list[Tensor | None] = [prefix, suffix]
        for index, pair in enumerate(zip(self.vlm_layers, self.expert_layers, strict=True)):
            if self._is_self_attention(index, prefix_only):
                attended, kv = self._self_attention(index, pair, hidden, mask, positions, cache)
            else:
                attended, kv = self._cross_attention(index, pair, hidden, mask, positions, cache)
            if keep_cache:
                kept[index] = {"key_states": kv[0], "value_states": kv[1]}
            hidden = [h if (h is None or layer is None) else _finish(layer, h, a)
                      for h, layer, a in zip(hidden, pair, attended, strict=True)]
        out = [None if h is None else norm(h) for h, norm in zip(hidden, self.norms, strict=True)]
        return out, (kept if keep_cache else None)

    def _self_attention(self, index, pair, hidden, mask, positions, cache):
        """Joint self-attention over the present streams (after the cached prefix, if any).
        Returns (per-stream attention outputs, this layer's prefix (K, V))."""
        qs, ks, vs, lengths = [], [], [], []
        for h, layer in zip(hidden, pair, strict=True):
            if h is None or layer is None:
                lengths.append(0)
                continue
            q, k, v = _qkv(layer, h)
            qs.append(q), ks.append(k), vs.append(v), lengths.append(h.shape[1])
        if not qs:  # suffix-only pass through a layer index without an expert layer
            return [None, None], (None, None)
        q, k, v = torch.cat(qs, dim=1), torch.cat(ks, dim=1), torch.cat(vs, dim=1)
        pos = positions[:, : q.shape[1]]
        q, k = rotate(q, pos), rotate(k, pos)
        prefix_kv = (k[:, : lengths[0]], v[:, : lengths[0]])
        if hidden[0] is None:  # suffix-only: read the cached prefix
            cached = cache[index]
            k = torch.cat([cached["key_states"], k], dim=1)
            v = torch.cat([cached["value_states"], v], dim=1)
        attended = self._attend(mask[:, : q.shape[1], : k.shape[1]], q, k, v)
        return [attended[:, : lengths[0]], attended[:, lengths[0]: lengths[0] + lengths[1]]], prefix_kv

    def _cross_attention(self, index, pair, hidden, mask, positions, cache):
        """VLM self-attention over the prefix (if present) + expert cross-attention to the prefix K/V."""
        vlm_layer, expert_layer = pair
        prefix, suffix = hidden
        attended: list[Tensor | None] = [None, None]
        if prefix is not None:
            n = prefix.shape[1]
            q, k, v = _qkv(vlm_layer, prefix)
            q, k = rotate(q, positions[:, :n]), rotate(k, positions[:, :n])
            attended[0] = self._attend(mask[:, :n, :n], q, k, v)
            expert_positions = positions[:, n:]
        else:
            k, v = cache[index]["key_states"], cache[index]["value_states"]
            expert_positions = positions
        if expert_layer is not None:
            attn = expert_layer.self_attn
            dtype = attn.k_proj.weight.dtype
            ek = attn.k_proj(k.to(dtype).reshape(*k.shape[:2], -1)).view(*k.shape[:2], -1, attn.head_dim)
            ev = attn.v_proj(v.to(dtype).reshape(*v.shape[:2], -1)).view(*v.shape[:2], -1, attn.head_dim)
            x = expert_layer.input_layernorm(suffix).to(attn.q_proj.weight.dtype)
            eq = attn.q_proj(x).view(*x.shape[:-1], -1, attn.head_dim)
            eq = rotate(eq, expert_positions - expert_positions.min(dim=1, keepdim=True).values)
            attended[1] = self._attend(mask[:, -suffix.shape[1]:, : ek.shape[1]], eq, ek, ev)
        return attended, (k, v)
