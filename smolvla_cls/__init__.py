"""SmolVLA-CLS: LeRobot's SmolVLA with CLS tokens, a delta expert and VICReg (policy type `smolvla_cls`).

Importing this package registers the config with lerobot and routes its processor factory to ours (lerobot 0.4.4
gives every SmolVLAConfig subclass SmolVLA's pipelines; 0.6 finds ours from the config class alone, so importing
just the config must be enough on both); the policy class is resolved lazily by lerobot's plugin lookup
(`modeling_smolvla_cls.SmolVLACLSPolicy`).
"""

from smolvla_cls.configuration_smolvla_cls import ConfigError, SmolVLACLSConfig
from smolvla_cls.processor_smolvla_cls import make_smolvla_cls_pre_post_processors  # noqa: F401  (routes 0.4.4)

__all__ = ["ConfigError", "SmolVLACLSConfig"]
__version__ = "0.1.0"
