"""`SmolVLACLSConfig`: SmolVLA plus CLS tokens, a delta expert and a VICReg objective.

Registered with lerobot as policy type `smolvla_cls`, so `lerobot-train --policy.type=smolvla_cls` and
`PreTrainedConfig.from_pretrained` resolve it. Every field of the seed design is here; invalid
combinations fail at construction with a message that names the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

SUFFIX_CLS_ATTENTION_MODES = ("all", "window")
ACT_CLS_WIRINGS = ("seed", "plan_only")  # smolvla_cls/plan_pass.py
# Every float field (loss weights, noise, time embedding, optimiser, model width): (name, lower bound, bound
# excluded). inf / nan in one makes training non-finite far from its cause: refused at construction, named.
POSITIVE_INT_FIELDS = ("chunk_size", "n_action_steps", "num_steps", "max_action_dim", "max_state_dim",
                       "tokenizer_max_length")
FLOAT_FIELDS = (
    ("vicreg_weight", 0.0, False), ("vicreg_lambda", 0.0, False), ("vicreg_mu", 0.0, False),
    ("vicreg_nu", 0.0, False), ("vicreg_gamma", 0.0, True), ("vicreg_eps", 0.0, True),  # 0: NaN grad, collapsed dim
    ("cls_noise_scale", 0.0, False), ("delta_time", 0.0, True), ("min_period", 0.0, True),
    # optimizer_lr 0: lerobot's cosine schedule divides by it (ZeroDivisionError when training starts)
    ("max_period", 0.0, True), ("optimizer_lr", 0.0, True), ("optimizer_eps", 0.0, False),
    ("optimizer_weight_decay", 0.0, False), ("optimizer_grad_clip_norm", 0.0, True),
    ("scheduler_decay_lr", 0.0, False), ("expert_width_multiplier", 0.0, True),
)


def _number(value: object) -> float | None:
    """`value` as a float, or None for a bool or a non-number (a config field typed float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class ConfigError(ValueError):
    """A SmolVLA-CLS config field holds an invalid value (the message names the field)."""


@PreTrainedConfig.register_subclass("smolvla_cls")
@dataclass
class SmolVLACLSConfig(SmolVLAConfig):
    # --- seed fields -------------------------------------------------------------------------
    train_delta_expert: bool = False  # delta objective (delta expert + VICReg); main expert frozen
    use_cls_head: bool = True  # prefix/suffix CLS tokens, projections, VICReg
    num_cls_prefix: int = 2  # learnable tokens prepended to the VLM prefix
    num_cls_suffix: int = 2  # learnable tokens appended to the delta expert's action suffix
    vicreg_weight: float = 0.01  # weight of VICReg in the delta objective
    vicreg_lambda: float = 25.0  # invariance weight
    vicreg_mu: float = 25.0  # variance weight
    vicreg_nu: float = 1.0  # covariance weight
    cls_noise_scale: float = 0.01  # std of the noise added to the main expert's chunk for the delta expert

    # --- what the design needs beyond the seed -----------------------------------------------
    # What the suffix CLS tokens may attend to among the action tokens: "all", or "window" = only the
    # first `suffix_cls_window` and the last `suffix_cls_window` action tokens. They never see the prefix.
    suffix_cls_attention: str = "all"
    suffix_cls_window: int = 2
    # Which pass produces act-CLS: "seed" = the delta expert's suffix CLS over the prefix K/V (the action
    # tokens read the observation, so act-CLS can copy it); "plan_only" = a delta-expert pass over the plan
    # rows alone, no observation input (smolvla_cls/plan_pass.py). Checkpoints without the field: "seed".
    act_cls_wiring: str = "seed"
    # delta/joint stages: also train the VLM's tail (final norm, last read layer's query/output/MLP), which
    # only the prefix CLS read-out uses; without it obs-CLS is read through untrained (random) weights.
    # False here so that a checkpoint saved without the field loads as what it was trained with; `make train`
    # (train.py --cls-readout on) sets True, as it does act_cls_wiring="plan_only".
    train_cls_readout: bool = False
    vicreg_gamma: float = 1.0  # target std of the variance hinge
    vicreg_eps: float = 1e-4  # inside the sqrt of the variance term
    delta_time: float = 0.5  # fixed flow time at which the delta expert runs (train and inference)
    # With train_delta_expert=True, also keep training the main expert's flow-matching loss in the same
    # step ("joint" objective); False = the seed's delta-only stage (main expert frozen).
    train_main_expert: bool = False
    # Offline VLM preset ("tiny" | "full"); when set, `vlm_model_name` is materialised locally (no hub).
    vlm_preset: str | None = None
    # lerobot 0.6 saves the hub revision of `pretrained_path` in config.json; declared here as 0.6 does, so a
    # checkpoint saved under 0.6 also parses under 0.4.4 (whose base class lacks it and never reads it).
    pretrained_revision: str | None = None

    def __post_init__(self):
        if self.vlm_preset is not None:
            from smolvla_cls.presets import materialize_preset

            self.vlm_model_name = str(materialize_preset(self.vlm_preset))
        super().__post_init__()
        self._validate_cls_fields()

    def _validate_cls_fields(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise ConfigError(f"{field}={getattr(self, field)!r}: expected {expected}")

        # scheduler_decay_steps 0 divides by zero in lerobot's cosine schedule; a bool is no count (saved as true)
        for name, low in (("num_cls_prefix", 0), ("num_cls_suffix", 0), ("suffix_cls_window", 0),
                          ("scheduler_warmup_steps", 0), ("scheduler_decay_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(name, f"an integer >= {low}")
        if self.use_cls_head:
            if self.num_cls_prefix < 1:
                fail("num_cls_prefix", ">= 1 when use_cls_head=True")
            if self.num_cls_suffix < 1:
                fail("num_cls_suffix", ">= 1 when use_cls_head=True")
            if self.num_cls_prefix != self.num_cls_suffix:
                fail("num_cls_suffix", f"== num_cls_prefix ({self.num_cls_prefix}): VICReg pairs CLS token i of both")
        if self.suffix_cls_attention not in SUFFIX_CLS_ATTENTION_MODES:
            fail("suffix_cls_attention", f"one of {SUFFIX_CLS_ATTENTION_MODES}")
        if self.act_cls_wiring not in ACT_CLS_WIRINGS:
            fail("act_cls_wiring", f"one of {ACT_CLS_WIRINGS}")
        if self.suffix_cls_attention == "window":
            if self.suffix_cls_window < 1:
                fail("suffix_cls_window", ">= 1 with suffix_cls_attention='window'")
            if 2 * self.suffix_cls_window > self.chunk_size:
                fail("suffix_cls_window", f"<= chunk_size/2 ({self.chunk_size // 2}): first n + last n must fit the chunk")
        for name in POSITIVE_INT_FIELDS:  # 0 or negative: no chunk, no denoising step (raw noise as the plan), ...
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "an integer >= 1")
        if self.n_action_steps > self.chunk_size:
            fail("n_action_steps", f"<= chunk_size ({self.chunk_size})")
        if self.n_obs_steps != 1:
            fail("n_obs_steps", "1 (SmolVLA reads one observation step)")
        size = self.resize_imgs_with_padding
        if size is not None and (len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size)):
            fail("resize_imgs_with_padding", "None or two integers >= 1 (height, width)")
        for name, low, strict in FLOAT_FIELDS:
            value = _number(getattr(self, name))
            if value is None or not math.isfinite(value) or (value <= low if strict else value < low):
                fail(name, f"a finite number {'>' if strict else '>='} {low:g}")
        betas = [_number(b) for b in self.optimizer_betas]
        if len(betas) != 2 or not all(b is not None and 0.0 <= b < 1.0 for b in betas):
            fail("optimizer_betas", "two numbers in [0, 1)")
        if not self.delta_time <= 1.0:
            fail("delta_time", "in (0, 1]")
        if self.adapt_to_pi_aloha:  # lerobot's Aloha state/action remapping: neither trained nor exported here
            fail("adapt_to_pi_aloha", "False (the pi-Aloha joint remapping is not supported by smolvla_cls)")
        if self.vlm_preset is not None and self.vlm_preset not in ("tiny", "full"):
            fail("vlm_preset", "'tiny', 'full' or None")
        if self.pad_language_to not in ("longest", "max_length"):
            fail("pad_language_to", "'longest' or 'max_length'")
        if self.rtc_config is not None and self.rtc_config.enabled:
            raise ConfigError("rtc_config: real-time chunking is not supported by smolvla_cls "
                              "(set rtc_config=None or rtc_config.enabled=False)")
