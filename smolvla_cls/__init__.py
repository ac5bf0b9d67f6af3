"""SmolVLA-CLS: LeRobot's SmolVLA with CLS tokens, a delta expert and VICReg (policy type `smolvla_cls`).

Importing this package registers the config with lerobot; the policy class is resolved lazily by
lerobot's plugin lookup (`modeling_smolvla_cls.SmolVLACLSPolicy`).
"""

from smolvla_cls.configuration_smolvla_cls import ConfigError, SmolVLACLSConfig

__all__ = ["ConfigError", "SmolVLACLSConfig"]
__version__ = "0.1.0"
