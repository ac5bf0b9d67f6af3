"""Gate calibration written into the manifest: how far obs-CLS embeddings move when nothing changed
versus after a perturbation, on held-out scripted-expert rollouts of the default task.

Distances are the runtime's: mean over CLS tokens, L2-normalise, cosine distance 1 - <a, b>.
- drift:       d(obs-CLS at planning tick t0, obs-CLS at t0 + k)
- consistency: d(obs-CLS at t0 + k, act-CLS of the plan made at t0 with k actions consumed); act-CLS as
               the runtime computes it for the model's `act_cls_wiring`, with the runtime's own encoding
               (`runtime.plan_inputs`): plan_only = the plan encoder on the n_action_steps - k rows still
               queued (front, plan_valid; k < n_action_steps); seed = the delta expert over the current K/V
               (remaining actions shifted to the front, tail repeating the last one)
"unchanged" pairs have no target jump in (t0, t0 + k]; "changed" pairs have one. The plan made at t0 is
what the noise-free expert does from t0 *knowing only the world at t0*: before a jump, the same scene rolled
out without the jump (identical up to the jump tick); the executed actions themselves would already turn
towards the new target after it, so a plan-only act-CLS would see the jump through its own plan. The default threshold
is the 95th percentile of the unchanged distances (≈ 5 % spurious resamples when nothing happened).
"""

from __future__ import annotations

import numpy as np
import torch

from export.graphs.graph_wrappers import DeltaExpertGraph, PlanEncoderGraph, PrefixGraph
from runtime.gate import cosine_distance as unit_cosine_distance
from runtime.gate import embed
from runtime.plan_inputs import delta_input, plan_encoder_input, queued_rows

QUANTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The runtime's gate distance between two [1, N, E] CLS outputs (same code, so same numbers)."""
    return unit_cosine_distance(embed(a), embed(b))


def plan_encoder_inputs(chunk: np.ndarray, consumed: int, n_action_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """plan_only wiring: the runtime's plan_encoder inputs (plan [1, T, A], plan_valid [1, T]) for a chunk [T, A]
    with `consumed` actions executed — the rows still queued, chunk[consumed:n_action_steps], encoded by the
    runtime's own functions (`runtime.plan_inputs`), so calibration and robot see identical inputs."""
    return plan_encoder_input(queued_rows(chunk, consumed, n_action_steps), chunk.shape[0])


def delta_inputs(chunk: np.ndarray, consumed: int) -> np.ndarray:
    """seed wiring: the runtime's delta-expert input [1, T, A] for a chunk [T, A] with `consumed` actions executed."""
    return delta_input(chunk[consumed:], chunk.shape[0])


def auroc(negatives: list[float], positives: list[float]) -> float | None:
    """P(positive distance > negative distance), ties counted half."""
    if not negatives or not positives:
        return None
    neg, pos = np.asarray(negatives), np.asarray(positives)
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def _summary(unchanged: list[float], changed: list[float]) -> dict:
    q = {k: float(np.percentile(unchanged, p)) for k, p in QUANTILES.items()} if unchanged else {}
    qc = {k: float(np.percentile(changed, p)) for k, p in QUANTILES.items()} if changed else {}
    return {"stats": q, "changed_stats": qc, "n_unchanged": len(unchanged), "n_changed": len(changed),
            "auroc": auroc(unchanged, changed), "default_threshold": q.get("p95", 0.05)}


def _rollout(task_cfg, seed: int, perturb: bool) -> tuple[list[dict], list[np.ndarray], int | None]:
    """(observations, noise-free expert actions, jump tick or None) of one scripted-expert episode."""
    from simtask import ReachEnv, ScriptedExpert

    env = ReachEnv(task_cfg)
    obs = env.reset(seed=seed, perturb=perturb)
    expert = ScriptedExpert(noise_std=0.0, seed=seed)
    frames, actions = [], []
    while True:
        frames.append(obs)
        a = expert.act(env)
        actions.append(a)
        obs, done, _ = env.step(a)
        if done or len(frames) >= task_cfg.max_steps:
            break
    return frames, actions, env.perturb_tick


@torch.no_grad()
def calibrate_on_simtask(model, normalize_state, normalize_action, tokenize, n_episodes: int = 24,
                         seed: int = 4242, progress: bool = True) -> dict:
    """Run the PyTorch graphs (same code as the ONNX ones) on expert rollouts and summarise distances."""
    from simtask import TaskConfig

    cfg = model.config
    prefix, delta = PrefixGraph(model).eval(), DeltaExpertGraph(model).eval()
    plan_encoder = PlanEncoderGraph(model).eval() if cfg.act_cls_wiring == "plan_only" else None
    h, w = cfg.resize_imgs_with_padding
    task_cfg = TaskConfig(image_size=h)
    if h != w:
        raise ValueError("gate calibration on simtask needs a square model image size")
    drift = {True: [], False: []}
    consistency = {True: [], False: []}
    iterator = range(n_episodes)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="gate calibration", unit="ep")
    for ep in iterator:
        frames, actions, jump = _rollout(task_cfg, seed + ep, perturb=(ep % 2 == 0))
        planned = actions if jump is None else _rollout(task_cfg, seed + ep, perturb=False)[1]
        # the no-jump episode ends at its target, where the expert holds still (zero displacement)
        planned = list(planned) + [np.zeros_like(actions[0])] * max(0, len(actions) - len(planned))
        tokens, mask = tokenize(frames[0]["task"])
        outs = []
        for o in frames:
            img = torch.from_numpy(o["observation.images.top"]).permute(2, 0, 1).float()[None, None] / 255.0
            state = torch.from_numpy(normalize_state(o["observation.state"]))[None]
            outs.append(prefix(img, tokens, mask, state))
        acts = normalize_action(np.asarray(actions, dtype=np.float32))
        before_jump = normalize_action(np.asarray(planned, dtype=np.float32))
        t_len = cfg.chunk_size
        for t0 in range(0, len(frames) - 1, cfg.n_action_steps):
            source = before_jump if jump is not None and t0 < jump else acts
            plan = source[t0:t0 + t_len]
            plan = np.concatenate([plan, np.repeat(plan[-1:], t_len - len(plan), axis=0)], axis=0)
            chunk = np.zeros((t_len, cfg.max_action_dim), dtype=np.float32)
            chunk[:, : acts.shape[1]] = plan
            for k in range(1, min(t_len, len(frames) - t0)):
                changed = jump is not None and t0 < jump <= t0 + k
                k_, v_, pad_, obs_cls = outs[t0 + k]
                drift[changed].append(cosine_distance(outs[t0][3].numpy(), obs_cls.numpy()))
                if plan_encoder is not None:
                    if k >= cfg.n_action_steps:  # the runtime's queue is empty here: it resamples, no gate
                        continue
                    plan_in, valid = plan_encoder_inputs(chunk, k, cfg.n_action_steps)
                    act_cls = plan_encoder(torch.from_numpy(plan_in), torch.from_numpy(valid))
                else:
                    _, act_cls = delta(torch.from_numpy(delta_inputs(chunk, k)), k_, v_, pad_)
                consistency[changed].append(cosine_distance(obs_cls.numpy(), act_cls.numpy()))
    return {"metric": "cosine_distance", "embedding": "mean over CLS tokens, L2-normalised",
            "act_cls_wiring": cfg.act_cls_wiring,
            "source": f"simtask scripted-expert rollouts, {n_episodes} episodes (half perturbed), seed {seed}",
            "drift": _summary(drift[False], drift[True]),
            "consistency": _summary(consistency[False], consistency[True])}


DEFAULT_GATES = ("drift", "consistency", "any:drift,consistency")


def with_default_gate(gate: dict, choice: str = "auto") -> dict:
    """`gate` with `default` set: `choice`, or for "auto" the CLS gate whose calibration AUROC (plan still
    valid vs target moved) is higher — drift on a tie or without a calibration. The gate benchmark
    (docs/11) is what this rule was checked against."""
    if choice != "auto":
        if choice not in DEFAULT_GATES:
            raise ValueError(f"--default-gate: expected auto or one of {', '.join(DEFAULT_GATES)}, got {choice!r}")
        return {**gate, "default": choice}
    d, c = gate["drift"].get("auroc"), gate["consistency"].get("auroc")
    return {**gate, "default": "consistency" if d is not None and c is not None and c > d else "drift"}


@torch.no_grad()
def uncalibrated(model) -> dict:
    """Placeholder for random-weight presets (no task to calibrate on): thresholds are not meaningful."""
    stub = {"stats": {}, "changed_stats": {}, "n_unchanged": 0, "n_changed": 0, "auroc": None,
            "default_threshold": 0.05}
    return {"metric": "cosine_distance", "embedding": "mean over CLS tokens, L2-normalised",
            "source": "uncalibrated (random-weight preset)", "drift": dict(stub), "consistency": dict(stub)}
