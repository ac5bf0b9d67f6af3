"""The gate policies on simtask (tiny only): `EdgePolicy` per gate on perturbed episodes, ms/tick and success."""

from __future__ import annotations

import numpy as np

from scripts.bench.measure import rss_mb

GATES = ("always", "interval:10", "drift", "consistency")


class SimtaskAdapter:
    """simtask policy adapter: renames simtask's camera key to the artifact's and records TickInfos."""

    def __init__(self, policy, camera_key: str):
        self.policy, self.camera_key, self.infos = policy, camera_key, []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs: dict) -> np.ndarray | None:  # None: nothing sent this tick (the agent stays)
        from simtask import IMAGE_KEY

        if self.camera_key not in obs:
            obs = {**obs, self.camera_key: obs[IMAGE_KEY]}
        a = self.policy.step(obs)
        self.infos.append(self.policy.last_info)
        return a


def child_gates(args) -> dict:
    from runtime.backend_onnxruntime import OnnxRuntimeBackend
    from runtime.manifest import Manifest
    from runtime.policy import EdgePolicy
    from simtask import IMAGE_KEY, ReachEnv, TaskConfig, evaluate_policy

    m = Manifest.load(args.artifacts, verify_hashes=False)
    backend = OnnxRuntimeBackend(args.artifacts, m, intra_op_threads=args.threads)
    cam = m.camera_keys[0]
    cfg = TaskConfig(image_size=m.image.height)
    warm_obs = ReachEnv(cfg).reset(seed=2**31 - 1)
    warm_obs = {**warm_obs, cam: warm_obs[IMAGE_KEY]}
    out = {}
    for gate in GATES:
        pol = EdgePolicy(args.artifacts, backend=backend, gate=gate, seed=0, verify_hashes=False)
        pol.warmup(warm_obs, runs=2)
        rec = SimtaskAdapter(pol, cam)
        rep = evaluate_policy(rec, n_episodes=args.episodes, seed=0, perturb=True, config=cfg)
        ms = [i.total_ms for i in rec.infos]
        c = pol.counters
        eps = args.episodes
        out[gate] = {"spec": pol.gate.spec, "ticks": len(ms), "mean_ms_per_tick": float(np.mean(ms)),
                     "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                     "resamples_per_episode": c.resamples / eps, "prefix_passes_per_episode": c.prefix_passes / eps,
                     "delta_passes_per_episode": c.delta_passes / eps, "success_rate": rep.success_rate,
                     "threshold": pol.gate.threshold if hasattr(pol.gate, "threshold") else None}
    backend.close()
    return {"episodes": args.episodes, "perturb": True, "artifacts": str(args.artifacts),
            "weights": m.raw.get("model", {}).get("source"), "gates": out, "memory": rss_mb()}
