"""Offline VLM presets: a local SmolVLM folder (config + processor + tokenizer) with no hub access.

SmolVLA always calls `AutoConfig/AutoProcessor/AutoTokenizer.from_pretrained(vlm_model_name)`; a local
folder is a valid name, so a preset is just a folder we write once and cache:
- `tiny`: ~0.5 M-parameter SmolVLM that trains in minutes on 2 CPU cores (64 px images, 16 tokens each,
  instructions of up to 8 words).
- `full`: the SmolVLM2-500M-Video-Instruct architecture with random weights (export/benchmarks at scale).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from runtime.atomic_folder import atomic_folder, remove_stale_partials

PRESET_VERSION = 1
MARKER = "smolvla_cls_preset.json"  # written last: a folder without it is incomplete

# Words the default task and typical robot instructions use; anything else maps to <unk>.
_VOCAB_WORDS = (
    "reach the a an to of on in at and or then go move pick place put push pull grasp open close "
    "red green blue yellow orange purple black white grey gray pink brown cyan magenta "
    "target disc cube block ball object bowl cup box left right up down top bottom front back "
    "near far first second third arm gripper robot please now"
).split()
_SPECIAL = ["<pad>", "<unk>", "<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>", "<video>"]

# Weight init std of the tiny VLM and expert. transformers' default 0.02 is sized for ~1000-wide layers;
# at width 64 it makes every layer's output ~6x too small (near-uniform attention, vanishing updates),
# which slowed training from scratch markedly (measured: loss 0.93 vs 0.82 after 700 steps, see
# the training notes). 0.08 ~ 0.6 / sqrt(64), the GPT-2 rule scaled to this width.
TINY_INIT_STD = 0.08

_TEXT = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=512,
                 initializer_range=TINY_INIT_STD),
    "full": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5, head_dim=64, vocab_size=49280, max_position_embeddings=8192),
}
_VISION = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 image_size=64, patch_size=16, initializer_range=TINY_INIT_STD),
    "full": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=512, patch_size=16),
}
# tiny: 16 px patches, no pixel shuffle -> 16 image tokens (the same count as 8 px patches shuffled by 2,
# with 4x fewer vision-encoder tokens: ~20 % faster per training step, and learns at least as fast).
_SCALE_FACTOR = {"tiny": 1, "full": 4}  # SmolVLM2-500M uses 4 (transformers' default of 2 is wrong there)

# SmolVLA-side settings that belong with each preset (image size, layer count, language length).
POLICY_OVERRIDES = {
    "tiny": dict(resize_imgs_with_padding=(64, 64), num_vlm_layers=4, tokenizer_max_length=8,
                 pad_language_to="max_length"),
    "full": dict(resize_imgs_with_padding=(512, 512), num_vlm_layers=16, tokenizer_max_length=48,
                 pad_language_to="max_length"),
}


def cache_root() -> Path:
    """Where preset folders live (override with SMOLVLA_CLS_CACHE)."""
    return Path(os.environ.get("SMOLVLA_CLS_CACHE", Path.home() / ".cache" / "smolvla_cls"))


def _spec(preset: str) -> dict:
    return {"v": PRESET_VERSION, "text": _TEXT[preset], "vision": _VISION[preset],
            "scale": _SCALE_FACTOR[preset], "vocab": _VOCAB_WORDS, "special": _SPECIAL}


def preset_dir(preset: str) -> Path:
    if preset not in _TEXT:
        raise ValueError(f"vlm_preset={preset!r}: expected one of {sorted(_TEXT)}")
    digest = hashlib.sha256(json.dumps(_spec(preset), sort_keys=True).encode()).hexdigest()[:10]
    return cache_root() / "vlm" / f"{preset}-{digest}"


def build_tokenizer():
    """A WordLevel tokenizer over a small instruction vocabulary, wrapped for transformers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIAL + list(dict.fromkeys(_VOCAB_WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # the "\n" SmolVLA appends is whitespace: dropped
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "image_token": "<image>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )


def _write_preset(preset: str, out: Path) -> None:
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    tokenizer = build_tokenizer()
    text = dict(_TEXT[preset], model_type="llama", rms_norm_eps=1e-5, rope_theta=100000.0,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    vision = dict(_VISION[preset], model_type="smolvlm_vision")
    config = SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=_SCALE_FACTOR[preset],
                           image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    config.save_pretrained(out)
    size = _VISION[preset]["image_size"]
    tokens_per_image = (size // _VISION[preset]["patch_size"]) ** 2 // _SCALE_FACTOR[preset] ** 2
    image_processor = SmolVLMImageProcessor(size={"longest_edge": size}, max_image_size={"longest_edge": size})
    processor = SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=SmolVLMVideoProcessor(), image_seq_len=tokens_per_image)
    processor.save_pretrained(out)
    (out / MARKER).write_text(json.dumps(_spec(preset), indent=1))  # last: marks the folder complete


def materialize_preset(preset: str) -> Path:
    """Return the preset's local folder, writing it atomically on first use (idempotent). A folder there without
    the marker file (interrupted, emptied, or from a writer without the swap) is rebuilt whole."""
    target = preset_dir(preset)
    # the scratch folders of killed writers from before atomic_folder (`.<preset>-<random>`) go too
    remove_stale_partials(target, legacy=[rf"\.{re.escape(preset)}-[a-z0-9_]{{8}}"])
    if (target / MARKER).is_file():
        return target
    # atomic_folder gives it a normal folder's mode under the umask (another account sharing SMOLVLA_CLS_CACHE can
    # read it), replaces an incomplete folder in one step, and deletes the scratch folders of killed writers;
    # racing processes each swap in an identical complete folder
    with atomic_folder(target) as tmp:
        _write_preset(preset, tmp)
    return target
