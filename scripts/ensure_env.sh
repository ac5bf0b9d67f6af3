#!/usr/bin/env bash
# Creates/refreshes the project venv only when pyproject.toml changed since the last install, so a
# warm machine (CI included) pays a hash check instead of an 8 GB install. Override with VENV=...
set -euo pipefail
VENV=${VENV:-/opt/venvs/smolvla-cls}
cd "$(dirname "$0")/.."
want=$(cat pyproject.toml plugins/lerobot_policy_smolvla_cls/pyproject.toml scripts/ensure_env.sh | sha256sum | cut -c1-16)
stamp="$VENV/.smolvla-cls-edge-stamp"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "[ensure_env] installing into $VENV (first run downloads ~4 GB: torch + lerobot)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# lerobot's plugin discovery imports installed distributions named lerobot_policy_*: this one registers smolvla_cls
# for `lerobot-train --policy.path=<checkpoint>` (plugins/lerobot_policy_smolvla_cls/pyproject.toml)
"$VENV/bin/python" -m pip install -q --no-deps -e plugins/lerobot_policy_smolvla_cls
# TensorRT 10.13 API as type stubs, for mypy only: its dependency (the TensorRT libs) has no wheel here.
"$VENV/bin/python" -m pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
echo "$want" > "$stamp"
echo "[ensure_env] ready: $VENV"
