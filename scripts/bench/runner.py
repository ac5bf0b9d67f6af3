"""One measurement side per subprocess (`python -m scripts.bench --child <kind>`): the parent's launcher and
the child's dispatch table, so each side's peak RSS is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench import ROOT
from scripts.bench.artifacts import child_export, child_quantize
from scripts.bench.gates import child_gates
from scripts.bench.lerobot_side import child_lerobot
from scripts.bench.ours import child_ort

CHILDREN = {"export": child_export, "lerobot": child_lerobot, "ort": child_ort, "gates": child_gates,
            "quantize": child_quantize}


def write_result(path: str, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=float))


def run_child(kind: str, config: str, result: Path, args, extra: list[str] | None = None, timeout: float = 900) -> dict:
    cmd = [sys.executable, "-m", "scripts.bench", "--child", kind, "--config", config, "--result", str(result),
           "--threads", str(args.threads), *(extra or [])]
    if args.reps:
        cmd += ["--reps", str(args.reps)]
    if args.smoke:
        cmd.append("--smoke")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).replace("\r", "\n").splitlines()[-25:])
        raise RuntimeError(f"bench child '{kind}' ({config}) failed with rc {proc.returncode}:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"] = wall
    return out
