"""`python -m runtime`: commands that run on the robot's computer.

    python -m runtime info --artifacts artifacts/onnx     # verify and summarise an artifact folder
    python -m runtime info --artifacts artifacts/onnx --expect-digest sha256:… --trusted-key keys/export.pub
    python -m runtime serve --artifacts artifacts/onnx --port 8080   # LeRobot's robot client talks to this
    python -m runtime robot --artifacts artifacts/onnx --robot.type=so101_follower --robot.port=...

Closed-loop evaluation on the simulated task is a development tool: `python -m evaluation run ...`.
"""

from __future__ import annotations

import argparse
import sys

from runtime import policy_arguments, robot_command
from runtime.cli_flags import as_flags
from runtime.manifest import Manifest, ManifestError
from runtime.serve import command as serve_command


def _info(args: argparse.Namespace) -> int:
    m = Manifest.load(args.artifacts, expected_digest=policy_arguments.expected_digest(args.expect_digest),
                      trusted_keys=policy_arguments.trusted_keys(args.trusted_key))
    d = m.dims
    print(f"{args.artifacts}: format {m.raw['format_version']}, producer {m.raw.get('producer', '?')}; "
          f"{len(m.files)} files verified (SHA-256, inside the folder)")
    signed = f"signed by key {m.signed_by}" if m.signed_by else "unsigned"
    trusted = " (signature verified against a trusted key)" if args.trusted_key else ""
    print(f"digest {m.digest}; {signed}{trusted}")
    print(f"cameras {[c.key for c in m.cameras]} → {m.image.height}x{m.image.width}; state {m.state_key} ({d.state_dim})")
    print(f"chunk {d.chunk_size} (execute {d.n_action_steps}), {d.num_steps} steps, action_dim {d.action_dim}, "
          f"lang_len {d.lang_len}, prefix_len {d.prefix_len}")
    q, mp = m.raw.get("quantization"), m.raw.get("mixed_precision")
    if isinstance(q, dict):
        print(f"precision: {q.get('mode')} (weights {q.get('weights', q.get('weight_type'))}; onnxruntime CPU only, "
              f"from {q.get('source')})")
    elif isinstance(mp, dict):
        print(f"precision: {mp.get('precision')} mixed (fp32 I/O; for strongly typed TensorRT builds; "
              f"from {mp.get('source')})")
    else:
        print("precision: float32 graphs")
    for metric, cal in m.gate_calibration.items():
        print(f"gate {metric}: default threshold {cal.default_threshold}, stats {dict(cal.stats)}")
    written = m.raw.get("gate", {}).get("default") is not None
    origin = "the export's recommendation" if written else "gate.default absent: drift"
    print(f"gate default: {m.default_gate} ({origin}; what --gate default and EdgePolicy use)")
    print(_robot_line(m))
    return 0


def _robot_line(m: Manifest) -> str:
    """The robot section in one line, or why `runtime robot` will refuse this folder (docs/07: check it first)."""
    r = m.robot
    if r is None:
        return ("robot: none (no motor names: `runtime robot` refuses this folder, `runtime serve` checks counts only; "
                "re-export with --dataset-root)")
    cams = ", ".join(f"{k} {c.height}x{c.width}" for k, c in r.cameras.items())
    return f"robot: {r.fps} fps; actions {list(r.action_names)}; state {list(r.state_names)}; cameras {cams}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="verify and summarise an artifact folder")
    info.add_argument("--artifacts", default="artifacts/onnx")
    policy_arguments.add_identity_arguments(info)
    info.set_defaults(func=_info)
    serve_command.add_parser(sub)
    robot_command.add_parser(sub)
    p.set_defaults(commands=sub.choices)  # main() reports an unknown flag with its command's usage line
    return p


def robot_flags(rest: list[str]) -> tuple[list[str], list[str]]:
    """Split what argparse left over into `--robot.<field>=value` flags (what lerobot's parser and `sim_reach`
    read) and the flags nobody knows. `--robot.type sim_reach` (a space, not `=`) is joined into
    `--robot.type=sim_reach`; a value that starts with `--` is never taken, so `--robot.id --fps 30` leaves
    `--robot.id` without a value (lerobot's parser names it) instead of swallowing `--fps`."""
    robot: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--robot.") and "=" not in arg and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            robot.append(f"{arg}={rest[i + 1]}")
            i += 2
            continue
        (robot if arg.startswith("--robot.") else unknown).append(arg)
        i += 1
    return robot, unknown


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    robot_args, unknown = robot_flags(rest) if args.command == "robot" else ([], rest)
    if unknown:  # argparse's format and exit code 2, naming only the flags nobody reads
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args, robot_args) if args.command == "robot" else args.func(args)
    except (ManifestError, ValueError, RuntimeError, ImportError, OSError) as exc:  # incl. BackendError, no TensorRT
        print(f"error: {as_flags(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
