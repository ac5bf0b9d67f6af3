"""SmolVLACLSConfig refuses, at construction and naming the field, every float that would make training
non-finite (nan / ±inf) and the unsupported pi-Aloha remapping (it used to surface only at the first step)."""

from __future__ import annotations

import dataclasses

import pytest

from smolvla_cls.configuration_smolvla_cls import FLOAT_FIELDS, ConfigError, SmolVLACLSConfig
from tests.model_fixtures import tiny_config

BAD = (float("nan"), float("inf"), float("-inf"))


def test_every_float_field_is_checked():
    """A float field added later must join FLOAT_FIELDS (else inf reaches the loss unnamed again)."""
    floats = {f.name for f in dataclasses.fields(SmolVLACLSConfig) if f.type in (float, "float")}
    assert floats == {name for name, _, _ in FLOAT_FIELDS}


@pytest.mark.parametrize("field", [name for name, _, _ in FLOAT_FIELDS])
@pytest.mark.parametrize("value", BAD, ids=repr)
def test_non_finite_floats_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        tiny_config(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("vicreg_gamma", 0.0), ("delta_time", 0.0), ("delta_time", 1.5), ("min_period", 0.0), ("vicreg_weight", -0.1),
    ("optimizer_grad_clip_norm", 0.0), ("vicreg_lambda", "25"), ("cls_noise_scale", True),
])
def test_out_of_range_or_non_numbers_are_refused(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        tiny_config(**{field: value})


@pytest.mark.parametrize("betas", [(0.9, float("nan")), (float("inf"), 0.95), (0.9, 1.0), (0.9,)])
def test_bad_optimizer_betas_are_refused(betas):
    with pytest.raises(ConfigError, match="optimizer_betas"):
        tiny_config(optimizer_betas=betas)


def test_defaults_and_edge_values_are_accepted():
    tiny_config()
    tiny_config(vicreg_weight=0.0, cls_noise_scale=0.0, delta_time=1.0, optimizer_betas=[0.0, 0.999],
                scheduler_warmup_steps=0)


@pytest.mark.parametrize(("field", "value"), [
    ("vicreg_eps", 0.0),  # sqrt(var + 0) of a collapsed dimension: NaN gradients
    ("optimizer_lr", 0.0),  # lerobot's cosine schedule divides decay_lr by it: ZeroDivisionError at the first step
    ("scheduler_decay_steps", 0), ("scheduler_decay_steps", True), ("scheduler_warmup_steps", -5),
    ("scheduler_warmup_steps", 1.5), ("num_cls_prefix", True), ("num_cls_suffix", False), ("suffix_cls_window", True),
])
def test_values_that_fail_deep_inside_lerobot_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        tiny_config(**{field: value})


def test_adapt_to_pi_aloha_is_refused_by_the_config_and_the_policy():
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy

    with pytest.raises(ConfigError, match="adapt_to_pi_aloha"):
        tiny_config(adapt_to_pi_aloha=True)
    config = tiny_config()
    config.adapt_to_pi_aloha = True  # set after construction: the policy validates again
    with pytest.raises(ConfigError, match="adapt_to_pi_aloha"):
        SmolVLACLSPolicy(config)


@pytest.mark.parametrize("field", ["n_action_steps", "num_steps", "max_action_dim", "max_state_dim", "tokenizer_max_length"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True], ids=repr)
def test_counts_that_would_break_the_model_are_refused(field, value):
    """num_steps=-1 used to denoise zero times and return the raw noise as the plan."""
    with pytest.raises(ConfigError, match=rf"^{field}="):
        tiny_config(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("n_obs_steps", 2), ("resize_imgs_with_padding", (0, 0)),
                                              ("resize_imgs_with_padding", (64,))])
def test_shapes_smolvla_cannot_read_are_refused(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        tiny_config(**{field: value})
