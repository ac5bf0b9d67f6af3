"""SmolVLA-CLS: SmolVLA + prefix/suffix CLS tokens, their projections, a delta expert and VICReg.

`VLAFlowMatchingCLS` extends lerobot's `VLAFlowMatching` (same VLM, same main expert, same weights
layout); `SmolVLACLSPolicy` extends `SmolVLAPolicy` and is what lerobot instantiates for
`--policy.type=smolvla_cls`. Mask rules and positions live in `masks.py`, the loss in `vicreg.py`.
"""

import copy
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy, VLAFlowMatching
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS
from torch import Tensor, nn

from smolvla_cls.attention import install_guarded_attention
from smolvla_cls.batch_validation import validate_batch
from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
from smolvla_cls.layer_pass import LayerPass
from smolvla_cls.masks import make_att_2d_masks_with_cls, position_ids_with_cls
from smolvla_cls.plan_pass import empty_prefix, remainder_mask, sample_remainders
from smolvla_cls.processor_smolvla_cls import make_smolvla_cls_pre_post_processors  # noqa: F401  (routes lerobot 0.4.4)
from smolvla_cls.vicreg import vicreg_loss

# t is split as t_hi + t_lo with t_hi = k / 2**12 (k an integer) and each frequency f = f_hi + f_lo with f_hi
# of 12 significant bits, so t_hi * f_hi is exact in float32 and its integer part can be dropped exactly.
_T_QUANTUM = 4096.0
_F_HI_BITS = 12


@lru_cache(maxsize=16)
def _frequencies(dim: int, min_period: float, max_period: float) -> tuple[Tensor, Tensor, Tensor]:
    """(f_hi, f_lo, f) in float32, from lerobot's float64 frequencies f = 1 / period (cycles per unit time).
    numpy, not torch: under ONNX export these must be constants, not traced float64 ops."""
    fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float64)
    freq = 1.0 / (min_period * (max_period / min_period) ** fraction)
    mantissa, exponent = np.frexp(freq)
    f_hi = np.ldexp(np.round(mantissa * 2**_F_HI_BITS), exponent - _F_HI_BITS)
    return tuple(torch.from_numpy(x.astype(np.float32)) for x in (f_hi, freq - f_hi, freq))


def time_embedding(time: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine embedding of flow time [B] -> [B, dim] in float32 ops only (TensorRT has no float64),
    within 1e-6 of lerobot's float64 one: the angle is reduced modulo one period exactly before sin/cos
    (a plain float32 angle of up to ~1571 rad is off by ~1e-4)."""
    if dim % 2:
        raise ValueError(f"time embedding dim={dim}: expected an even number")
    f_hi, f_lo, freq = (c.to(time.device) for c in _frequencies(dim, float(min_period), float(max_period)))
    t = time.to(torch.float32)[:, None]
    t_hi = torch.round(t * _T_QUANTUM) / _T_QUANTUM  # exact: scaling by a power of two, rounding
    t_lo = t - t_hi  # exact, |t_lo| <= 2**-13
    whole = t_hi * f_hi  # exact (12 + 12 significant bits)
    cycles = (whole - torch.round(whole)) + (t_hi * f_lo + t_lo * freq)  # the small terms' rounding is ~1e-9
    cycles = cycles - torch.round(cycles)  # in [-0.5, 0.5]
    angle = cycles * (2 * math.pi)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def cls_projection(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer MLP head of the seed: d_in -> d_hidden -> d_out."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class VLAFlowMatchingCLS(VLAFlowMatching):
    """The SmolVLA network with CLS tokens, CLS projections and a delta expert."""

    def __init__(self, config: SmolVLACLSConfig, rtc_processor=None):
        super().__init__(config, rtc_processor=rtc_processor)
        install_guarded_attention(self.vlm_with_expert)
        vlm_hidden = self.vlm_with_expert.config.text_config.hidden_size
        expert_hidden = self.vlm_with_expert.expert_hidden_size
        self.num_prefix_cls = config.num_cls_prefix if config.use_cls_head else 0
        self.num_suffix_cls = config.num_cls_suffix if config.use_cls_head else 0
        if config.use_cls_head:
            self.pre_cls_param = nn.Parameter(torch.randn(1, self.num_prefix_cls, vlm_hidden) * 0.02)
            self.suf_cls_param = nn.Parameter(torch.randn(1, self.num_suffix_cls, expert_hidden) * 0.02)
            self.obs_cls_proj = cls_projection(vlm_hidden, vlm_hidden, expert_hidden)
            self.act_cls_proj = cls_projection(expert_hidden, vlm_hidden, expert_hidden)
        # Delta expert: same architecture as the main expert, its own action/time projections.
        self.delta_expert = copy.deepcopy(self.vlm_with_expert.lm_expert)
        self.delta_action_in_proj = copy.deepcopy(self.action_in_proj)
        self.delta_action_out_proj = copy.deepcopy(self.action_out_proj)
        self.delta_action_time_mlp_in = copy.deepcopy(self.action_time_mlp_in)
        self.delta_action_time_mlp_out = copy.deepcopy(self.action_time_mlp_out)
        self.reset_delta_from_main()
        self.set_requires_grad()

    # -- parameters -----------------------------------------------------------------------------
    def delta_modules(self) -> dict[str, nn.Module]:
        return {"delta_expert": self.delta_expert, "delta_action_in_proj": self.delta_action_in_proj,
                "delta_action_out_proj": self.delta_action_out_proj,
                "delta_action_time_mlp_in": self.delta_action_time_mlp_in,
                "delta_action_time_mlp_out": self.delta_action_time_mlp_out}

    def main_expert_modules(self) -> dict[str, nn.Module]:
        return {"lm_expert": self.vlm_with_expert.lm_expert, "action_in_proj": self.action_in_proj,
                "action_out_proj": self.action_out_proj, "action_time_mlp_in": self.action_time_mlp_in,
                "action_time_mlp_out": self.action_time_mlp_out}

    @torch.no_grad()
    def reset_delta_from_main(self) -> None:
        """(Re)initialise the delta expert as a copy of the main expert, with a zero output projection so
        that an untrained delta expert's correction is exactly 0 (refining with it is a no-op)."""
        for (_, main), (_, delta) in zip(self.main_expert_modules().items(), self.delta_modules().items(),
                                         strict=True):
            delta.load_state_dict(main.state_dict())
        nn.init.zeros_(self.delta_action_out_proj.weight)
        nn.init.zeros_(self.delta_action_out_proj.bias)

    def training_stage(self) -> str:
        """"main" (flow matching), "delta" (delta objective, VLM and main expert frozen) or "joint" (both)."""
        if not self.config.train_delta_expert:
            return "main"
        return "joint" if self.config.train_main_expert else "delta"

    def cls_modules(self) -> dict[str, nn.Module | nn.Parameter]:
        """The CLS tokens and projections: only the delta objective's VICReg term reaches them."""
        if not self.num_prefix_cls:
            return {}
        return {"pre_cls_param": self.pre_cls_param, "suf_cls_param": self.suf_cls_param,
                "obs_cls_proj": self.obs_cls_proj, "act_cls_proj": self.act_cls_proj}

    def set_requires_grad(self):
        """Trainable = exactly what the stage's loss reaches (lerobot's contract: no trainable parameter
        without a gradient). main: lerobot's SmolVLA rules; delta and CLS frozen (no loss reaches them).
        delta: delta expert + CLS (+ the VLM tail with `train_cls_readout`); rest of the VLM, state projection
        and main expert frozen whatever `train_expert_only` says, so the delta/VICReg loss cannot move the K/V
        the main expert reads. joint: both."""
        super().set_requires_grad()
        if not hasattr(self, "delta_expert"):
            return  # called from the parent constructor, before our modules exist
        stage = self.training_stage()
        frozen_main = stage == "delta"
        if frozen_main:
            for module in (self.vlm_with_expert.vlm, self.state_proj):
                module.requires_grad_(False)
        self._freeze_vlm_tail()
        delta_and_cls = {**self.delta_modules(), **self.cls_modules()}
        for group, trainable in ((self.main_expert_modules(), not frozen_main), (delta_and_cls, stage != "main")):
            for item in group.values():
                params = item.named_parameters() if isinstance(item, nn.Module) else [("", item)]
                for name, p in params:
                    p.requires_grad = trainable and "lm_head" not in name
        if self.num_prefix_cls and stage != "main" and self.config.train_cls_readout:
            for p in self.vlm_tail_parameters():  # only obs-CLS reads them: the expert's K/V stay as they are
                p.requires_grad = True

    def vlm_tail_parameters(self, strict: bool = True) -> list[nn.Parameter]:
        """The VLM parameters that cannot change the K/V the experts read: the final norm, the layers after
        the last one read, and that layer's query, output and MLP. Only the prefix CLS read-out uses them.
        A parameter of that layer named neither way is refused (`strict`) or included (to freeze it)."""
        with_expert = self.vlm_with_expert
        text = with_expert.get_vlm_model().text_model
        experts = with_expert.get_model_layers([text, with_expert.lm_expert])[1]
        last_read = max(i for i, layer in enumerate(experts) if layer is not None)
        params = list(text.norm.parameters())
        for layer in list(text.layers)[last_read + 1:]:
            params += list(layer.parameters())
        layer = text.layers[last_read]
        # by name, both sides: a parameter that is neither (a k_norm, a fused qkv in another transformers
        # version) could feed the K/V, so it is refused rather than silently trained as "tail"
        kv_side, tail = ("self_attn.k_proj.", "self_attn.v_proj.", "input_layernorm."), \
            ("self_attn.q_proj.", "self_attn.o_proj.", "mlp.", "post_attention_layernorm.")
        unknown = [n for n, _ in layer.named_parameters() if not n.startswith(kv_side + tail)]
        if unknown and strict:
            raise NotImplementedError(f"train_cls_readout: cannot tell whether {unknown} of VLM layer {last_read} "
                                      "feed the experts' K/V; set train_cls_readout=False for this VLM")
        return params + [p for n, p in layer.named_parameters() if n.startswith(tail) or n in unknown]

    def _freeze_vlm_tail(self) -> None:
        """Flow matching reaches the VLM only through the K/V the expert reads, never its tail
        (`vlm_tail_parameters`; lerobot means to freeze these too, but its name patterns miss transformers'
        parameter names). The delta/joint stages train the tail again for obs-CLS (`train_cls_readout`)."""
        for p in self.vlm_tail_parameters(strict=False):  # unknown parameters frozen too, as before #20
            p.requires_grad = False

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode in the delta stage (as lerobot does for `train_expert_only`)."""
        super().train(mode)
        if mode and hasattr(self, "delta_expert") and self.training_stage() == "delta":
            for module in self.main_expert_modules().values():
                module.eval()
            self.vlm_with_expert.vlm.eval()
        return self

    # -- embeddings -----------------------------------------------------------------------------
    def embed_prefix(self, images, img_masks, lang_tokens, lang_masks, state=None):
        """SmolVLA's prefix with the prefix CLS tokens prepended (att 0; visibility set by the mask)."""
        embs, pad_masks, att_masks = super().embed_prefix(images, img_masks, lang_tokens, lang_masks, state)
        if not self.num_prefix_cls:
            return embs, pad_masks, att_masks
        b = embs.shape[0]
        cls = self.pre_cls_param.to(embs.dtype).expand(b, -1, -1)
        ones = torch.ones(b, self.num_prefix_cls, dtype=torch.bool, device=embs.device)
        return (torch.cat([cls, embs], dim=1), torch.cat([ones, pad_masks], dim=1),
                torch.cat([torch.zeros_like(ones, dtype=att_masks.dtype), att_masks], dim=1))

    def _action_time_tokens(self, actions, time, in_proj, mlp_in, mlp_out):
        action_emb = in_proj(actions)
        time_emb = time_embedding(time, action_emb.shape[-1], self.config.min_period, self.config.max_period)
        time_emb = time_emb.to(action_emb.dtype)[:, None, :].expand_as(action_emb)
        return mlp_out(F.silu(mlp_in(torch.cat([action_emb, time_emb], dim=2))))

    def embed_suffix(self, noisy_actions, timestep):
        """Main expert's action tokens (SmolVLA's, with a float32 time embedding)."""
        embs = self._action_time_tokens(noisy_actions, timestep, self.action_in_proj,
                                        self.action_time_mlp_in, self.action_time_mlp_out)
        b, t = embs.shape[:2]
        pad = torch.ones(b, t, dtype=torch.bool, device=embs.device)
        return embs, pad, torch.ones(b, t, dtype=embs.dtype, device=embs.device)

    def embed_suffix_delta(self, actions, time):
        """Delta expert's action tokens followed by the suffix CLS tokens."""
        embs = self._action_time_tokens(actions, time, self.delta_action_in_proj,
                                        self.delta_action_time_mlp_in, self.delta_action_time_mlp_out)
        b = embs.shape[0]
        if self.num_suffix_cls:
            embs = torch.cat([embs, self.suf_cls_param.to(embs.dtype).expand(b, -1, -1)], dim=1)
        pad = torch.ones(b, embs.shape[1], dtype=torch.bool, device=embs.device)
        return embs, pad, torch.ones(b, embs.shape[1], dtype=embs.dtype, device=embs.device)

    # -- masks ----------------------------------------------------------------------------------
    def _window(self) -> int | None:
        return self.config.suffix_cls_window if self.config.suffix_cls_attention == "window" else None

    def _mask(self, pad, att, prefix_len, num_suffix_cls):
        return make_att_2d_masks_with_cls(pad, att, prefix_len=prefix_len, num_prefix_cls=self.num_prefix_cls,
                                          num_suffix_cls=num_suffix_cls, suffix_cls_window=self._window())

    # -- passes ---------------------------------------------------------------------------------
    def encode_prefix(self, images, img_masks, lang_tokens, lang_masks, state):
        """Prefix pass: (per-layer K/V cache, prefix pad mask [B,P], prefix CLS hidden states [B,NP,H])."""
        embs, pad, att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state=state)
        mask = self._mask(pad, att, pad.shape[1], 0)
        (prefix_out, _), kv = LayerPass(self.vlm_with_expert).run(
            [embs, None], mask, position_ids_with_cls(pad, self.num_prefix_cls), keep_cache=True)
        return kv, pad, prefix_out[:, : self.num_prefix_cls]

    def _expert_pass(self, expert, suffix_embs, suffix_pad, suffix_att, prefix_pad, kv, num_suffix_cls):
        """One pass of `expert` over the suffix, reading the cached prefix K/V."""
        prefix_len = prefix_pad.shape[1]
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        att = torch.cat([torch.zeros_like(prefix_pad, dtype=suffix_att.dtype), suffix_att], dim=1)
        mask = self._mask(pad, att, prefix_len, num_suffix_cls)[:, prefix_len:]
        position_ids = position_ids_with_cls(pad, self.num_prefix_cls)[:, prefix_len:]
        (_, out), _ = LayerPass(self.vlm_with_expert, expert).run([None, suffix_embs], mask, position_ids, cache=kv)
        return out.to(torch.float32)

    def denoise_step(self, prefix_pad_masks, past_key_values, x_t, timestep):
        """Main expert velocity v_t [B,T,A] for x_t at `timestep` [B]."""
        embs, pad, att = self.embed_suffix(x_t, timestep)
        out = self._expert_pass(self.vlm_with_expert.lm_expert, embs, pad, att, prefix_pad_masks,
                                past_key_values, 0)
        return self.action_out_proj(out[:, : self.config.chunk_size])

    def delta_step(self, prefix_pad_masks, past_key_values, actions):
        """Delta expert on a (normalised, padded) chunk: (correction [B,T,A], suffix CLS hidden [B,NS,He])."""
        time = torch.full((actions.shape[0],), self.config.delta_time, dtype=torch.float32, device=actions.device)
        embs, pad, att = self.embed_suffix_delta(actions, time)
        out = self._expert_pass(self.delta_expert, embs, pad, att, prefix_pad_masks, past_key_values,
                                self.num_suffix_cls)
        t = self.config.chunk_size
        return self.delta_action_out_proj(out[:, :t]), out[:, t:]

    def plan_step(self, plan: Tensor, plan_valid: Tensor) -> Tensor:
        """Suffix CLS hidden [B,NS,He] of a normalised plan [B,T,A] alone — no observation input
        (act_cls_wiring="plan_only"; rows with plan_valid [B,T] False are padding, see plan_pass.py)."""
        b, t = plan.shape[:2]
        # only the real action dims: the main expert leaves arbitrary values in the padded ones (no loss
        # reaches them), which would otherwise feed act-CLS noise that differs between plans of one scene
        real = torch.arange(plan.shape[-1], device=plan.device) < self.config.action_feature.shape[0]
        plan = plan * real.to(plan.dtype)
        time = torch.full((b,), self.config.delta_time, dtype=torch.float32, device=plan.device)
        embs, pad, att = self.embed_suffix_delta(plan, time)
        pad = torch.cat([plan_valid.to(torch.bool), pad[:, t:]], dim=1)
        kv_dtype = self.vlm_with_expert.vlm.dtype
        kv, prefix_pad = empty_prefix(self.vlm_with_expert, b, max(1, self.num_prefix_cls), plan.device, kv_dtype)
        out = self._expert_pass(self.delta_expert, embs, pad, att, prefix_pad, kv, self.num_suffix_cls)
        return out[:, t:]

    def act_cls_hidden(self, prefix_pad, kv, actions: Tensor, plan_valid: Tensor | None = None) -> Tensor:
        """Suffix CLS hidden states of `actions` under the configured act-CLS wiring: the delta expert's
        pass over the prefix K/V ("seed") or the plan alone ("plan_only"; all rows valid by default)."""
        if self.config.act_cls_wiring == "plan_only":
            if plan_valid is None:
                plan_valid = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
            return self.plan_step(actions, plan_valid)
        return self.delta_step(prefix_pad, kv, actions)[1]

    def denoise(self, prefix_pad, kv, noise):
        """The Euler loop: t = 1 -> 0 in num_steps steps (noise at t=1, actions at t=0)."""
        x_t, dt = noise, -1.0 / self.config.num_steps
        for step in range(self.config.num_steps):
            time = torch.full((noise.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=noise.device)
            x_t = x_t + dt * self.denoise_step(prefix_pad, kv, x_t, time)
        return x_t

    def sample_actions(self, images, img_masks, lang_tokens, lang_masks, state, noise=None, **kwargs):
        if noise is None:
            noise = self.sample_noise((state.shape[0], self.config.chunk_size, self.config.max_action_dim),
                                      state.device)
        kv, prefix_pad, _ = self.encode_prefix(images, img_masks, lang_tokens, lang_masks, state)
        return self.denoise(prefix_pad, kv, noise)

    def embed_cls(self, prefix_cls_hidden: Tensor | None = None, suffix_cls_hidden: Tensor | None = None):
        """Projected CLS embeddings (obs-CLS from the prefix, act-CLS from the delta expert's suffix)."""
        obs = self.obs_cls_proj(prefix_cls_hidden.float()) if prefix_cls_hidden is not None else None
        act = self.act_cls_proj(suffix_cls_hidden.float()) if suffix_cls_hidden is not None else None
        return obs, act

    # -- training objectives -------------------------------------------------------------------
    def forward(self, images, img_masks, lang_tokens, lang_masks, state, actions, noise=None, time=None):
        """Main expert flow-matching loss per element [B,T,A] (joint prefix+suffix pass, no cache)."""
        noise = self.sample_noise(actions.shape, actions.device) if noise is None else noise
        time = self.sample_time(actions.shape[0], actions.device) if time is None else time
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        prefix_embs, prefix_pad, prefix_att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state)
        suffix_embs, suffix_pad, suffix_att = self.embed_suffix(x_t, time)
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        att = torch.cat([prefix_att.to(suffix_att.dtype), suffix_att], dim=1)
        (_, suffix_out), _ = LayerPass(self.vlm_with_expert).run(
            [prefix_embs, suffix_embs], self._mask(pad, att, prefix_pad.shape[1], 0),
            position_ids_with_cls(pad, self.num_prefix_cls))
        v_t = self.action_out_proj(suffix_out[:, -self.config.chunk_size:].to(torch.float32))
        return F.mse_loss(noise - actions, v_t, reduction="none")

    def forward_delta_expert(self, images, img_masks, lang_tokens, lang_masks, state, action_dim: int,
                             noise=None):
        """Delta objective of the seed. Returns (per-element delta losses [B,T,A], VICReg terms or None).

        prefix pass with CLS -> main expert fully denoises (no grad) -> x_t -> x_t + N(0, σ²) on the real
        action dims -> delta expert predicts v; target x_t - x_t_noisy.
        """
        kv, prefix_pad, prefix_cls = self.encode_prefix(images, img_masks, lang_tokens, lang_masks, state)
        b, t, a = state.shape[0], self.config.chunk_size, self.config.max_action_dim
        with torch.no_grad():
            start = self.sample_noise((b, t, a), state.device) if noise is None else noise
            x_t = self.denoise(prefix_pad, {k: {n: v.detach() for n, v in d.items()} for k, d in kv.items()}, start)
        jitter = torch.randn_like(x_t) * self.config.cls_noise_scale
        jitter[..., action_dim:] = 0.0  # padded action dims stay exactly as the main expert left them
        x_noisy = x_t + jitter
        v, suffix_cls = self.delta_step(prefix_pad, kv, x_noisy)
        losses = F.mse_loss(v, x_t - x_noisy, reduction="none")
        terms = None
        if self.num_prefix_cls and self.config.act_cls_wiring == "plan_only":
            # the remainder of a still-valid plan: its first R rows, R ~ U[1, T] (plan_pass.py)
            valid = remainder_mask(sample_remainders(b, t, state.device), t)
            suffix_cls = self.plan_step(x_noisy * valid[..., None], valid)
        if self.num_prefix_cls:
            obs, act = self.embed_cls(prefix_cls, suffix_cls)
            c = self.config
            terms = vicreg_loss(obs, act, c.vicreg_lambda, c.vicreg_mu, c.vicreg_nu, c.vicreg_gamma, c.vicreg_eps)
        return losses, terms


def masked_mean(losses: Tensor, action_is_pad: Tensor | None, action_dim: int) -> tuple[Tensor, Tensor, dict]:
    """(batch mean, per-sample means [B], stats) over in-episode steps and real action dims only
    (upstream averages over both paddings). The batch mean weights samples by their valid steps."""
    stats = {"after_forward": losses.detach().mean().item()}
    valid = torch.ones(losses.shape[:2], dtype=torch.bool, device=losses.device)
    if action_is_pad is not None:
        valid = ~action_is_pad.bool()
    masked = losses * valid[..., None]
    stats["after_in_ep_bound"] = masked.detach().mean().item()
    masked = masked[..., :action_dim]
    count = valid.sum(dim=1) * action_dim
    per_sample = masked.sum(dim=(1, 2)) / count.clamp(min=1)
    loss = masked.sum() / count.sum().clamp(min=1)
    stats["after_rm_padding"] = loss.detach().item()
    return loss, per_sample, stats


def _saved_by_delta_training(model_file) -> bool:
    """Whether the checkpoint beside `model_file` was saved by a delta (or joint) stage, i.e. holds a
    trained delta expert. A checkpoint without its config.json counts as one if it has delta weights."""
    from safetensors import safe_open

    with safe_open(model_file, framework="pt") as f:
        has_delta = any(k.startswith("model.delta_expert.") for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    config_file = Path(model_file).parent / "config.json"
    if not has_delta or not config_file.exists():
        return has_delta
    return bool(json.loads(config_file.read_text()).get("train_delta_expert", False))


class SmolVLACLSPolicy(SmolVLAPolicy):
    """lerobot policy `smolvla_cls` (config: `SmolVLACLSConfig`)."""

    config_class = SmolVLACLSConfig
    name = "smolvla_cls"

    def __init__(self, config: SmolVLACLSConfig, **kwargs):
        if not isinstance(config, SmolVLACLSConfig):
            raise TypeError(f"config: expected SmolVLACLSConfig, got {type(config).__name__}")
        super(SmolVLAPolicy, self).__init__(config)
        config._validate_cls_fields()  # again: fields may have been changed since construction (rtc_config, adapt_to_pi_aloha)
        config.validate_features()
        self.config = config
        self.init_rtc_processor()
        self.model = VLAFlowMatchingCLS(config, rtc_processor=self.rtc_processor)
        self.reset()

    @classmethod
    def supports_rtc(cls) -> bool:
        """Real-time chunking (lerobot's `rtc_config`) is not supported; the config refuses it."""
        return False

    @classmethod
    def _load_as_safetensor(cls, model, model_file, map_location, strict):
        """Load weights. A checkpoint whose delta expert was never trained (saved by a main stage, or a plain
        SmolVLA one without delta weights) gets its delta expert re-copied from the *loaded* main expert
        (zero output projection): that is how a delta stage starts. A delta/joint checkpoint (resuming a
        delta stage, or inference) keeps its own. New CLS parameters keep their init."""
        trained_delta = _saved_by_delta_training(model_file)
        model = super()._load_as_safetensor(model, model_file, map_location, strict)
        if not trained_delta:
            model.model.reset_delta_from_main()
        return model

    def _inputs(self, batch):
        images, img_masks = self.prepare_images(batch)
        state = self.prepare_state(batch)
        return images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state

    @property
    def action_dim(self) -> int:
        return self.config.action_feature.shape[0]

    def forward(self, batch: dict[str, Tensor], noise=None, time=None, reduction: str = "mean"):
        """Training loss: main flow matching and/or the delta objective, padding excluded everywhere.
        reduction="mean": a scalar; "none": per-sample losses [B], as lerobot's SmolVLA."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'none'")
        validate_batch(self.config, batch, need_action=True)
        inputs = self._inputs(batch)
        action_is_pad = batch.get("action_is_pad")
        loss_dict: dict[str, float] = {}
        total = None
        per_sample = None
        if self.model.training_stage() != "delta":
            losses = self.model.forward(*inputs, self.prepare_action(batch), noise, time)
            main_loss, per_sample, stats = masked_mean(losses, action_is_pad, self.action_dim)
            loss_dict.update({f"losses_{k}": v for k, v in stats.items()})
            loss_dict["main_loss"] = main_loss.item()
            total = main_loss
        if self.config.train_delta_expert:
            losses, terms = self.model.forward_delta_expert(*inputs, action_dim=self.action_dim)
            delta_loss, delta_per_sample, stats = masked_mean(losses, action_is_pad, self.action_dim)
            loss_dict.update({f"delta_losses_{k}": v for k, v in stats.items()})
            if terms is not None:
                vicreg = self.config.vicreg_weight * terms.loss
                delta_loss, delta_per_sample = delta_loss + vicreg, delta_per_sample + vicreg
                loss_dict.update(vicreg_loss=terms.loss.item(), vicreg_invariance=terms.invariance.item(),
                                 vicreg_variance=terms.variance.item(), vicreg_covariance=terms.covariance.item())
            loss_dict["delta_loss"] = delta_loss.item()
            total = delta_loss if total is None else total + delta_loss
            per_sample = delta_per_sample if per_sample is None else per_sample + delta_per_sample
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss is not finite ({total.item()}); components: {loss_dict}")
        loss_dict["loss"] = total.item()
        if reduction == "none":
            # per sample [B] (lerobot's RA-BC weights these); VICReg is a batch statistic, added to each
            return per_sample, loss_dict
        return total, loss_dict

    @torch.no_grad()
    def cls_embeddings(self, batch: dict[str, Tensor], actions: Tensor | None = None,
                       plan_valid: Tensor | None = None):
        """(obs-CLS [B,NP,E], act-CLS [B,NS,E] of `actions` or of the policy's own chunk) for analysis,
        act-CLS under the configured wiring (`plan_valid` [B,T]: the remainder rows, plan_only only). Runs in eval
        mode and puts back the caller's (a read-out mid-training must not switch dropout off for good)."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            return self._cls_embeddings(batch, actions, plan_valid)
        finally:
            for module, mode in modes:
                module.training = mode

    def _cls_embeddings(self, batch: dict[str, Tensor], actions: Tensor | None, plan_valid: Tensor | None):
        validate_batch(self.config, batch, need_action=False)
        images, img_masks, lang, lang_mask, state = self._inputs(batch)
        kv, pad, prefix_cls = self.model.encode_prefix(images, img_masks, lang, lang_mask, state)
        if actions is None:
            actions = self.model.denoise(pad, kv, self.model.sample_noise(
                (state.shape[0], self.config.chunk_size, self.config.max_action_dim), state.device))
        else:
            actions = self.prepare_action({ACTION: actions})
        suffix_cls = self.model.act_cls_hidden(pad, kv, actions, plan_valid)
        return self.model.embed_cls(prefix_cls, suffix_cls)
