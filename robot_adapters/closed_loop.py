"""Closed-loop runs of the simulated reach robot, two ways, on the same episodes:
- `served`: LeRobot's own `RobotClient` (from the installed lerobot, unmodified) drives a running
  `runtime serve` over gRPC, building the robot with lerobot's factory from `SimReachRobotConfig`;
- `direct`: the same artifacts and gate in `runtime robot`'s loop (EdgePolicy on the loop thread).
Used by the tests and by `python -m robot_adapters.closed_loop` (the numbers in docs/07-robot.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
from pathlib import Path

from robot_adapters.sim_reach import ACTION_NAMES, STATE_NAMES, SimReachRobot, SimReachSettings
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import SyncSource, run_robot


def served(port: int, episodes: int, *, seed: int = 0, action_bound: float | None = None, actions_per_chunk: int = 10,
           fps: int = 60, threshold: float = 1.0, timeout: float = 600.0) -> SimReachRobot:
    """Run `episodes` perturbed episodes with lerobot's RobotClient against 127.0.0.1:`port`."""
    from lerobot.async_inference.configs import RobotClientConfig
    from lerobot.async_inference.robot_client import RobotClient

    from robot_adapters.config_sim_reach import SimReachRobotConfig

    logging.getLogger("robot_client").setLevel(logging.WARNING)
    cfg = RobotClientConfig(
        policy_type="smolvla_cls", pretrained_name_or_path="served-by-runtime",
        robot=SimReachRobotConfig(episodes=episodes, seed=seed, perturb=True, action_bound=action_bound),
        actions_per_chunk=actions_per_chunk, task="reach the red target", server_address=f"127.0.0.1:{port}",
        fps=fps, chunk_size_threshold=threshold, aggregate_fn_name="latest_only")
    client = RobotClient(cfg)
    robot = client.robot
    if not isinstance(robot, SimReachRobot) or not client.start():
        raise RuntimeError("robot client did not start")
    threads = [threading.Thread(target=client.receive_actions, daemon=True),
               threading.Thread(target=client.control_loop, kwargs={"task": cfg.task}, daemon=True)]
    for t in threads:
        t.start()
    try:
        if not robot.finished.wait(timeout):
            raise TimeoutError(f"only {len(robot.outcomes)} of {episodes} episodes in {timeout} s")
    finally:
        client.stop()
        for t in threads:
            t.join(5)
    return robot


def direct(artifacts: str | Path, episodes: int, *, seed: int = 0, gate: str = "default",
           action_bound: float | None = None) -> tuple[SimReachRobot, dict[str, int]]:
    """The same episodes with EdgePolicy stepped on the loop thread; returns the robot and the policy counters."""
    robot = SimReachRobot(SimReachSettings(episodes=episodes, seed=seed, perturb=True, action_bound=action_bound))
    with EdgePolicy(artifacts, gate=gate) as policy:
        interface = RobotInterface.from_manifest(policy.manifest)
        if interface.state_names is None:  # an export without a robot section: the sim robot's names
            interface = dataclasses.replace(interface, state_names=STATE_NAMES, action_names=ACTION_NAMES)
        run_robot(robot, SyncSource(policy, interface), interface, policy.guard.stop_action, fps=1e6,
                  should_stop=robot.finished.is_set, bounds=policy.manifest.action_bounds)
        return robot, policy.counters.as_dict()


def main(argv: list[str] | None = None) -> int:
    """Flags are checked first (one argparse line naming the flag); a failure of the run itself (an unloadable
    export, a client that does not start, a timeout) is one `error:` line and exit status 2, not a traceback."""
    from evaluation.cli_args import output_file, positive_int
    from runtime.manifest import ManifestError

    p = argparse.ArgumentParser(prog="python -m robot_adapters.closed_loop",
                                description="served (LeRobot RobotClient → runtime serve) vs direct runtime")
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--episodes", type=positive_int, default=40)
    p.add_argument("--gate", default="default", help="gate spec; default = the manifest's gate.default")
    p.add_argument("--fps", type=positive_int, default=30)
    p.add_argument("--out", type=output_file, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if not (Path(args.artifacts) / "manifest.json").is_file():
        p.error(f"--artifacts {args.artifacts}: no manifest.json there (export one with `make export`)")
    try:
        res = _compare(args)
    except (ManifestError, ValueError, RuntimeError, TimeoutError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


def _compare(args: argparse.Namespace) -> dict:
    """served, then direct, on the same episodes; the numbers docs/07 reports."""
    from runtime.serve.server import ServeConfig, build_server

    server, svc, port = build_server(ServeConfig(artifacts=args.artifacts, gate=args.gate, port=0))
    server.start()
    gate_spec = svc.template.gate.spec
    try:
        bound = float(abs(svc.template.guard.low).max()), float(abs(svc.template.guard.high).max())
        s = served(port, args.episodes, fps=args.fps, action_bound=max(bound))
        stats = svc.stats()
    finally:  # the server's deadline thread and its model go before the direct run loads a second copy
        server.stop(grace=None).wait()
        svc.close()
        svc.template.close()
    d, direct_counters = direct(args.artifacts, args.episodes, gate=args.gate, action_bound=max(bound))
    res = {"episodes": args.episodes, "gate": gate_spec, "fps": args.fps, "served_success": s.success_rate,
           "direct_success": d.success_rate, "served_unsafe": s.unsafe, "direct_unsafe": d.unsafe,
           "served_steps_mean": sum(o.steps for o in s.outcomes) / len(s.outcomes),
           "direct_steps_mean": sum(o.steps for o in d.outcomes) / len(d.outcomes),
           "served_resamples_per_observation": stats["policy"]["resamples"] / max(1, stats["observations_processed"]),
           "direct_resamples_per_tick": direct_counters["resamples"] / max(1, direct_counters["ticks"]),
           "server": stats, "direct": direct_counters}
    return res


if __name__ == "__main__":
    raise SystemExit(main())
