"""`python -m runtime robot`: drive a robot with the runtime in a paced loop (see runtime.robot_loop).

The robot comes from `--robot.type=...` plus `--robot.<field>=...` flags: `sim_reach` (the simulated
reach robot, numpy only) or any lerobot robot built by lerobot's own factory (`robot_adapters.factory`,
which imports lerobot; the runtime core does not).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import signal
from typing import Any

import numpy as np

from runtime.async_planner import check_margin
from runtime.observation import ObservationError
from runtime.policy import EdgePolicy
from runtime.policy_arguments import add_engines_argument, add_identity_arguments, engine_options
from runtime.robot_interface import RobotInterface, moves_on
from runtime.robot_loop import ActionSource, AsyncSource, SourceAction, SyncSource, run_robot
from runtime.safety import ActionGuard
from runtime.seam import SEAM_MODES

MAX_FPS = 1000.0  # the manifest's robot.fps bound too
MAX_STALL_S = 3600.0
ADAPTERS = "robot_adapters.factory"  # outside the runtime core; loaded only when a robot is asked for


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("robot", help="run the policy on a robot (LeRobot Robot interface) in a paced loop",
                       epilog="robot flags: --robot.type=so101_follower --robot.port=/dev/ttyACM0 "
                              "--robot.cameras='{top: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}' "
                              "(any lerobot robot), or --robot.type=sim_reach [--robot.episodes=N]")
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu")
    add_engines_argument(p)
    p.add_argument("--gate", default="default", help="gate spec; default = the manifest's gate.default")
    p.add_argument("--refine", action="store_true")
    p.add_argument("--task", default=None, help="instruction (default: the robot's own `task`, if it has one)")
    p.add_argument("--fps", type=float, default=None, help="loop rate (default: the manifest's robot.fps, else 30)")
    p.add_argument("--inference", choices=["async", "thread", "inline"], default="async",
                   help="async: AsyncEdgePolicy on a worker thread (chunks aligned to their planning tick, seam "
                        "handling; holds the rate through slow resamples); inline: EdgePolicy.step on the loop "
                        "thread; thread: deprecated, = async with --seam none")
    p.add_argument("--seam", choices=SEAM_MODES, default=None,
                   help="with --inference async: how a new chunk continues the executing one (default inpaint; "
                        "none with --reanchor, the combination measured in docs/06b)")
    p.add_argument("--reanchor", action="store_true",
                   help="with --inference async, for DISPLACEMENT actions only (dx, dy, ...; not joint targets): add "
                        "back the motion the skipped rows of a late chunk assumed but the robot did not make")
    p.add_argument("--slew", type=float, default=None,
                   help="with --inference async: limit each tick's action change to SLEW x the plans' mean row-to-row "
                        "step (with --reanchor what it holds back is carried; default 2 with --reanchor, else off; "
                        "0 turns it off; docs/06b)")
    p.add_argument("--margin", type=int, default=None,
                   help="with --inference async: request the next chunk when the plan has <= delay + margin rows "
                        "left; 0 <= margin < n_action_steps (default 1)")
    p.add_argument("--on-stop", choices=["auto", "stop", "hold"], default="auto",
                   help="on Ctrl-C / repeated faults / a stall: auto = per dimension, the manifest's stop action on "
                        "displacement / velocity dimensions (dx, x.vel, *delta*) and the last target sent on position "
                        "dimensions (never a jump to the stop pose); stop = the stop action on every dimension; hold = "
                        "send nothing more (a robot with velocity dimensions still gets auto: a held velocity keeps "
                        "driving)")
    p.add_argument("--max-faults", type=int, default=3, help="consecutive faults before the safe stop")
    p.add_argument("--fallback", choices=["auto", "hold", "stop"], default="auto",
                   help="the action sent in place of a bad one: hold = the last safe action (position targets), "
                        "stop = the manifest's stop action; auto = hold, but stop on displacement / velocity "
                        "dimensions (dx, x.vel, *delta*), where a repeat keeps moving")
    p.add_argument("--max-stall-s", type=float, default=2.0,
                   help="seconds in a row with no action ready (a hung or stalled backend) before the safe stop; "
                        "5x as long before the first action (first inference); 0 turns the watchdog off")
    p.add_argument("--max-ticks", type=int, default=None)
    p.add_argument("--log-every", type=int, default=30, help="log one tick in N (1: every tick)")
    add_identity_arguments(p)
    p.set_defaults(func=run)


DEFAULT_SLEW = 2.0  # seam / within-chunk step 1.38-1.66 at L = 1-5, success kept, recovery +1-2 ticks (docs/06b)


def reanchor_slew(slew: float | None, reanchor: bool) -> float | None:
    """--slew → the emitter's multiple (None = off; default on with --reanchor); refused when negative/not finite."""
    if slew is None:
        return DEFAULT_SLEW if reanchor else None
    if not math.isfinite(slew) or slew < 0:
        raise ValueError(f"--slew must be a finite number >= 0 (0 turns the limit off), got {slew!r}")
    return slew or None


def fallback_mode(choice: str, action_names: tuple[str, ...]) -> tuple[str, np.ndarray | None]:
    """--fallback → (guard mode, stop_dims). auto: hold, but the stop action on dimensions that a repeated value
    keeps moving (`moves_on`): position targets hold, displacements and velocities stop. hold: every dimension
    holds. Either way, before any safe action the guard sends nothing rather than the stop pose (runtime.safety)."""
    if choice == "stop" or not action_names:
        return choice if choice != "auto" else "hold", None
    moving = [moves_on(n) for n in action_names] if choice == "auto" else [False] * len(action_names)
    return "hold", np.array(moving, dtype=bool)


def check_loop_arguments(args: argparse.Namespace) -> None:
    """The loop's numeric flags, refused by name (0 is a value, never "not given")."""
    if args.fps is not None and not (math.isfinite(args.fps) and 0 < args.fps <= MAX_FPS):
        raise ValueError(f"--fps must be a number in (0, {MAX_FPS}], got {args.fps!r}")
    if not (math.isfinite(args.max_stall_s) and 0 <= args.max_stall_s <= MAX_STALL_S):
        raise ValueError(f"--max-stall-s must be a number in [0, {MAX_STALL_S}] seconds (0: off), got {args.max_stall_s!r}")
    if args.max_faults < 1:
        raise ValueError(f"--max-faults must be >= 1, got {args.max_faults!r}")
    if args.max_ticks is not None and args.max_ticks < 0:
        raise ValueError(f"--max-ticks must be >= 0, got {args.max_ticks!r}")


def run(args: argparse.Namespace, robot_args: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_loop_arguments(args)  # before anything is loaded or connected
    policy = EdgePolicy(args.artifacts, backend=args.backend, device=args.device, gate=args.gate, refine=args.refine,
                        expected_digest=args.expect_digest, trusted_keys=args.trusted_key,
                        backend_options=engine_options(args.backend, args.engines))
    sources: list[ActionSource] = []  # the source `_drive` built, once it has
    try:
        return _drive(args, robot_args, policy, sources)
    finally:  # whatever happened (a refused robot, a failed disconnect, a second Ctrl-C): the backend is released
        if any(getattr(source, "hung", False) for source in sources):
            # its worker is stuck in a graph call, holding the policy: closing would wait forever (the exit ends it)
            logging.getLogger("runtime.robot").error("the inference worker is stuck in a graph call: its backend "
                                                     "is left for the process exit to release")
        else:
            policy.close()


def _drive(args: argparse.Namespace, robot_args: list[str], policy: EdgePolicy, sources: list[ActionSource]) -> int:
    """`run` once the policy is loaded: build and check the robot, then the loop and its report."""
    log = logging.getLogger("runtime.robot")
    if args.margin is not None:  # refused before the robot is connected, naming the flag
        try:
            check_margin(args.margin, policy.manifest.dims.n_action_steps)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
    slew = reanchor_slew(args.slew, args.reanchor)
    iface = RobotInterface.from_manifest(policy.manifest)
    if iface.state_names is None:
        raise ValueError(f"{args.artifacts}: the manifest has no 'robot' section (motor names); re-export with "
                         "a LeRobotDataset (export --dataset-root) to drive a robot")
    mode, stop_dims = fallback_mode(args.fallback, iface.action_names or ())
    g = policy.guard
    policy.guard = ActionGuard(policy.manifest.action_bounds, policy.manifest.stop_action, mode, g.out_of_bounds,
                               stop_dims)
    robot = importlib.import_module(ADAPTERS).make_robot(robot_args)
    iface.check_robot(robot)  # other motors / cameras: refused by name before anything is started or connected
    task = args.task if args.task is not None else getattr(robot, "task", None)
    if task is None:
        raise ValueError("--task is required: the instruction sent with every observation")
    try:  # refused before the robot is connected, not as a fault on every tick once it is
        policy.validator.check_task(task)
    except ObservationError as exc:
        raise ValueError(f"{'--task' if args.task is not None else 'the robot task'}: {exc}") from None
    fps = args.fps if args.fps is not None else (iface.fps or 30.0)
    max_starved = max(1, math.ceil(args.max_stall_s * fps)) if args.max_stall_s > 0 else None
    if args.inference == "thread":
        log.warning("--inference thread is deprecated: it runs the async executor without seam handling "
                    "(= --inference async --seam none)")
    if args.inference == "inline":
        if args.margin is not None:
            log.warning("--margin %d is ignored with --inference inline (it only applies to async inference)",
                        args.margin)
        if args.reanchor:
            log.warning("--reanchor is ignored with --inference inline (nothing is skipped without async inference)")
        if slew is not None and args.slew is not None:
            log.warning("--slew is ignored with --inference inline (it limits the async executor's seams)")
        source: ActionSource = SyncSource(policy, iface, task=task)
    else:
        if args.reanchor and any(n.endswith(".pos") for n in iface.action_names or []):
            log.warning("--reanchor adds displacement to actions, but this robot's actions look like positions "
                        "(%s): re-anchoring is for displacement actions only", ", ".join(iface.action_names[:3]))
        seam = "none" if args.inference == "thread" else (args.seam or ("none" if args.reanchor else "inpaint"))
        source = AsyncSource(policy, iface, task=task, fps=fps, seam=seam,
                             margin=1 if args.margin is None else args.margin, reanchor=args.reanchor,
                             slew=slew)
    sources.append(source)
    log.info("driving %s at %.1f Hz with %s (%s, gate %s, inference %s); task %r", type(robot).__name__, fps,
             args.artifacts, args.backend, policy.gate.spec, args.inference, task)

    def on_sigterm(signum: int, frame: object) -> None:  # systemd / docker stop: the same safe stop as Ctrl-C
        raise KeyboardInterrupt

    previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def on_tick(tick: int, sa: SourceAction, work_ms: float) -> None:
        """Log one tick in --log-every: its own work (read, inference, send) against the grid's period."""
        if tick % max(1, args.log_every) == 0:
            log.info("tick %d: work %.1f ms of a %.1f ms period, gate %s, resampled %s, inference %.1f ms%s", tick,
                     work_ms, 1e3 / fps, sa.gate_reason or "-", sa.resampled, sa.latency_ms,
                     "" if sa.action is not None else ", no action (held)")

    finished = getattr(robot, "finished", None)  # a robot that ends on its own (sim_reach: its episodes are done)
    should_stop = finished.is_set if callable(getattr(finished, "is_set", None)) else None
    try:
        rep = run_robot(robot, source, iface, policy.guard.stop_action, fps=fps, max_ticks=args.max_ticks,
                        max_faults=args.max_faults, on_stop=args.on_stop, on_tick=on_tick, should_stop=should_stop,
                        bounds=policy.manifest.action_bounds, max_starved=max_starved)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM while connecting, or a second one during the safe stop (whose
        # stop/close/disconnect steps still all ran): no report, one line instead of a traceback
        log.error("interrupted while connecting or again during the safe stop (steps taken: see above)")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    print(json.dumps({"ticks": rep.ticks, "seconds": round(rep.seconds, 2), "rate_hz": round(rep.rate_hz, 2),
                      "overruns": rep.overruns, "max_period_ms": round(rep.max_period_ms, 1),
                      "p95_period_ms": round(rep.p95_period_ms, 1),
                      "starved": rep.starved, "starved_stops": rep.starved_stops, "clipped": rep.clipped,
                      "faults": rep.faults, "stop": rep.stop_reason or "end",
                      "stops_sent": rep.stops_sent, "repeated_frames": rep.repeated_frames,
                      "disconnect": rep.disconnect_error or "ok", "policy": policy.counters.as_dict(),
                      **_episode_summary(robot)}))
    return 0 if not (rep.faults or rep.disconnect_error) else 1


def _episode_summary(robot: Any) -> dict[str, Any]:
    """A robot that keeps episode outcomes (sim_reach): how many ran and succeeded; nothing for a real robot."""
    outcomes = getattr(robot, "outcomes", None)
    if not isinstance(outcomes, list):
        return {}
    return {"episodes": len(outcomes), "successes": sum(bool(getattr(o, "success", False)) for o in outcomes)}
