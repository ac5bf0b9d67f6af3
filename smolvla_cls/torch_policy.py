"""PyTorch adapter: a trained `smolvla_cls` lerobot checkpoint as a simtask policy (`reset()`, `act(obs)`).

The adapter does exactly what lerobot's own evaluation does with an environment observation:
uint8 HWC image -> float CHW in [0, 1], state -> float32, instruction -> `task`; batch of one;
lerobot's saved preprocessor (tokeniser, normaliser, device) -> `policy.select_action` (a queue of
`n_action_steps` actions per predicted chunk) -> saved postprocessor (unnormaliser) -> np.ndarray.

`predict_chunk(obs, noise)` returns the whole unnormalised chunk for a given flow-matching noise
(the reference for ONNX/TensorRT parity checks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_PREFIX = "observation.images."


def _require_checkpoint(checkpoint_dir: Path) -> None:
    if not checkpoint_dir.is_dir():
        raise SystemExit(f"TorchPolicy: checkpoint folder {checkpoint_dir} does not exist")
    for name in ("config.json", "model.safetensors"):
        if not (checkpoint_dir / name).exists():
            raise SystemExit(f"TorchPolicy: {checkpoint_dir / name} is missing: not a lerobot pretrained_model folder")


class TorchPolicy:
    """Closed-loop PyTorch policy around a lerobot `pretrained_model` folder of `smolvla_cls`.

    `untrained=True` keeps the checkpoint's config and processors (normalisation stats) but uses fresh
    random weights (seeded by `init_seed`): the baseline for closed-loop evaluation."""

    def __init__(self, checkpoint_dir: str | Path, device: str = "cpu", n_action_steps: int | None = None,
                 noise_seed: int | None = 0, untrained: bool = False, init_seed: int = 0) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import make_pre_post_processors

        from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
        from smolvla_cls.lerobot_compat import unknown_config_fields
        from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy
        from smolvla_cls.processor_smolvla_cls import preset_tokenizer_overrides

        self.checkpoint_dir = Path(checkpoint_dir)
        _require_checkpoint(self.checkpoint_dir)
        problem = unknown_config_fields(self.checkpoint_dir / "config.json", SmolVLACLSConfig)
        if problem:
            raise SystemExit(f"TorchPolicy: {problem}")
        config = PreTrainedConfig.from_pretrained(self.checkpoint_dir)  # dispatches on the saved "type"
        if not isinstance(config, SmolVLACLSConfig):
            raise SystemExit(f"TorchPolicy: {self.checkpoint_dir} holds a {config.type!r} policy, not smolvla_cls")
        config.device = device
        if n_action_steps is not None:
            if not 1 <= int(n_action_steps) <= config.chunk_size:
                raise ValueError(f"TorchPolicy: n_action_steps={n_action_steps}: expected 1..{config.chunk_size}")
            config.n_action_steps = int(n_action_steps)
        if untrained:  # same config and processors, fresh random weights: the baseline a trained policy must beat
            torch.manual_seed(int(init_seed))
            self.policy = SmolVLACLSPolicy(config)
        else:
            self.policy = SmolVLACLSPolicy.from_pretrained(self.checkpoint_dir, config=config)
        self.policy.to(device).eval()
        self.config = self.policy.config
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            self.config, pretrained_path=str(self.checkpoint_dir),
            preprocessor_overrides={"device_processor": {"device": device},
                                    **preset_tokenizer_overrides(self.checkpoint_dir, config.vlm_preset)},
            postprocessor_overrides={"device_processor": {"device": "cpu"}},
        )
        self.device = device
        self.image_keys = [k for k in self.config.input_features if k.startswith(IMAGE_PREFIX)]
        self.noise_seed = noise_seed
        self._torch = torch
        self.reset()

    # ------------------------------------------------------------------ simtask policy protocol
    def reset(self) -> None:
        """New episode: empty the action queue and restart the noise stream (deterministic episodes)."""
        self.policy.reset()
        self._generator = None
        if self.noise_seed is not None:
            self._generator = self._torch.Generator(device="cpu").manual_seed(int(self.noise_seed))

    def _noise(self):
        if self._generator is None:
            return None
        shape = (1, self.config.chunk_size, self.config.max_action_dim)
        return self._torch.randn(shape, generator=self._generator, dtype=self._torch.float32).to(self.device)

    def observation_batch(self, obs: dict[str, Any]) -> dict[str, Any]:
        """simtask observation -> lerobot's raw batch of one (before the preprocessor)."""
        torch = self._torch
        batch: dict[str, Any] = {}
        for key in self.image_keys:
            if key not in obs:
                raise KeyError(f"TorchPolicy: observation lacks image {key!r} (has {sorted(obs)})")
            img = np.asarray(obs[key])
            if img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"TorchPolicy: {key} must be HxWx3, got shape {img.shape}")
            scale = 255.0 if img.dtype == np.uint8 else 1.0
            batch[key] = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(scale)[None]
        batch["observation.state"] = torch.as_tensor(np.asarray(obs["observation.state"], dtype=np.float32))[None]
        batch["task"] = [str(obs["task"])]
        return batch

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = self.preprocessor(self.observation_batch(obs))
            # Noise is drawn only when the queue is empty (a new chunk), so the stream is per chunk.
            noise = self._noise() if len(self.policy._queues["action"]) == 0 else None
            action = self.policy.select_action(batch, noise=noise)
            action = self.postprocessor(action)
        return action.detach().cpu().numpy().reshape(-1).astype(np.float32)

    # ------------------------------------------------------------------ reference for exports
    def predict_chunk(self, obs: dict[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        """Whole unnormalised chunk [chunk_size, action_dim] for `noise` [chunk_size, max_action_dim]
        (or [1, chunk, max_action_dim]); None draws from the noise stream. Leaves the queue untouched."""
        torch = self._torch
        with torch.inference_mode():
            batch = self.preprocessor(self.observation_batch(obs))
            if noise is None:
                t_noise = self._noise()
            else:
                t_noise = torch.as_tensor(np.asarray(noise, dtype=np.float32)).reshape(
                    1, self.config.chunk_size, self.config.max_action_dim).to(self.device)
            chunk = self.policy._get_action_chunk(batch, t_noise)  # [1, T, A] normalised
            chunk = self.postprocessor(chunk)
        return chunk.detach().cpu().numpy()[0].astype(np.float32)
