"""Imported by lerobot's plugin discovery (installed distributions named `lerobot_policy_*`): registers the
`smolvla_cls` config and policy before draccus parses `--policy.path` / `--policy.type`."""

import smolvla_cls.modeling_smolvla_cls  # noqa: F401  (config registration + policy class)
