"""Pre/post processors of `smolvla_cls`: exactly SmolVLA's (rename, batch, newline, tokenizer, device,
normaliser / unnormaliser), found by lerobot's plugin lookup under this name."""

from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors


def make_smolvla_cls_pre_post_processors(config, dataset_stats=None):
    return make_smolvla_pre_post_processors(config, dataset_stats=dataset_stats)
