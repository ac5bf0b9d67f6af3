"""Held-out CLS alignment: do obs-CLS embeddings of frames match the act-CLS embeddings of their own
ground-truth action chunks?

Held-out data are generated in-process (no dataset needed): simtask scenes from a seed stream that the
training recording never uses, rolled out by the scripted expert; one frame per episode (so no two
candidates are near-duplicate neighbouring frames of one episode) with the expert's next `chunk_size`
clean actions (the last action repeated past the episode end, as lerobot pads chunks).

Metrics on B pairs (mean over CLS tokens, L2-normalised, cosine-similarity matrix S = obs · actᵀ):
- retrieval top-1 / top-5 (obs -> act): chance is 1/B and 5/B;
- AUROC of matched S[i, i] vs mismatched S[i, j≠i] (chance 0.5);
- per-dimension std of the normalised embeddings across frames (collapse floor COLLAPSE_STD);
- effective rank: exp(entropy of the normalised singular values of the centred embeddings);
- the retrieval ceiling (`plan_retrieval_ceiling`): the same top-1 with the policy's own sampled chunk as
  the query, i.e. how finely this policy's observation features determine the plan at all.

CLI: python -m smolvla_cls.alignment --checkpoint DIR [--episodes 256] [--seed 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COLLAPSE_STD = 0.01  # a dimension whose std (of L2-normalised embeddings) is below this counts as collapsed
HELDOUT_BASE_SEED = 7919  # base seed of the 'eval' stream offset used for held-out frames (training uses 'train')


@dataclass
class HeldOut:
    """Held-out (observation, action chunk) pairs and per-frame labels for plots."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)  # [T, action_dim]
    target_color: list[str] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)  # early / late (unperturbed), before / after jump (perturbed)
    perturbed: list[bool] = field(default_factory=list)
    goals: list[np.ndarray] = field(default_factory=list)  # the goal's centre at the frame (retrieval_oracle.py)

    def __len__(self) -> int:
        return len(self.chunks)


def collect_heldout(chunk_size: int, n_episodes: int = 256, seed: int = HELDOUT_BASE_SEED,
                    perturb_fraction: float = 0.5, noise_std: float = 0.02, config=None) -> HeldOut:
    """One random frame per scripted-expert episode of fresh scenes (see module docstring)."""
    from simtask import ReachEnv, ScriptedExpert, TaskConfig, episode_seeds, run_expert_episode

    cfg = config if config is not None else TaskConfig()
    env = ReachEnv(cfg)
    rng = np.random.default_rng([seed, 0xA11])
    expert = ScriptedExpert(noise_std=noise_std, seed=seed)
    out = HeldOut()
    for i, s in enumerate(episode_seeds(seed, n_episodes, stream="eval")):
        perturb = bool(rng.random() < perturb_fraction)
        ep = run_expert_episode(env, expert, s, perturb=perturb)
        n = len(ep)
        t = int(rng.integers(0, n))
        idx = np.minimum(np.arange(t, t + chunk_size), n - 1)
        obs = ep.observations[t]
        color = next(w for w in obs["task"].split() if w in cfg.colors)
        out.observations.append(obs)
        out.chunks.append(np.stack([ep.actions[j] for j in idx]).astype(np.float32))
        out.target_color.append(color)
        out.perturbed.append(perturb)
        out.goals.append(np.asarray(ep.goals[t], dtype=np.float64))
        if perturb and ep.perturb_tick is not None:
            out.phase.append("after jump" if t >= ep.perturb_tick else "before jump")
        else:
            out.phase.append("late" if t >= n / 2 else "early")
    return out


def cls_embeddings(torch_policy, heldout: HeldOut, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(obs-CLS [B, E], act-CLS [B, E]) mean-pooled over CLS tokens, raw (not normalised)."""
    import torch

    obs_all, act_all = [], []
    for start in range(0, len(heldout), batch_size):
        sl = slice(start, start + batch_size)
        raws = [torch_policy.observation_batch(o) for o in heldout.observations[sl]]
        batch = {k: torch.cat([r[k] for r in raws]) for k in raws[0] if k != "task"}
        batch["task"] = [r["task"][0] for r in raws]
        batch["action"] = torch.as_tensor(np.stack(heldout.chunks[sl]))
        with torch.inference_mode():
            processed = torch_policy.preprocessor(batch)
            obs, act = torch_policy.policy.cls_embeddings(processed, actions=processed["action"])
        obs_all.append(obs.mean(dim=1).float().cpu().numpy())
        act_all.append(act.mean(dim=1).float().cpu().numpy())
    return np.concatenate(obs_all), np.concatenate(act_all)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def effective_rank(x: np.ndarray) -> float:
    s = np.linalg.svd(x - x.mean(axis=0, keepdims=True), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(matched score > mismatched score), ties count half (Mann-Whitney U / (n_pos n_neg))."""
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def alignment_metrics(obs: np.ndarray, act: np.ndarray) -> dict[str, Any]:
    """All metrics of the module docstring for paired embeddings obs[i] <-> act[i]."""
    b = obs.shape[0]
    if b < 2 or act.shape[0] != b:
        raise ValueError(f"alignment_metrics: need >= 2 pairs of equal count (got {obs.shape}, {act.shape})")
    zo, za = _normalise(obs.astype(np.float64)), _normalise(act.astype(np.float64))
    sim = zo @ za.T
    off = ~np.eye(b, dtype=bool)
    # rank 0 = the matched item beats every other candidate; a tie counts against it (collapsed embeddings
    # must score chance or worse, never a perfect top-1)
    ranks_o2a = ((sim >= np.diag(sim)[:, None]) & off).sum(axis=1)
    ranks_a2o = ((sim.T >= np.diag(sim)[:, None]) & off).sum(axis=1)
    k5 = min(5, b)
    std_o, std_a = zo.std(axis=0), za.std(axis=0)
    return {
        "n_pairs": b,
        "retrieval_top1": float((ranks_o2a == 0).mean()),
        "retrieval_top5": float((ranks_o2a < k5).mean()),
        "retrieval_top1_act_to_obs": float((ranks_a2o == 0).mean()),
        "chance_top1": 1.0 / b,
        "chance_top5": k5 / b,
        "mean_rank": float(ranks_o2a.mean()),
        "auroc_matched_vs_mismatched": auroc(np.diag(sim), sim[off]),
        "mean_cos_matched": float(np.diag(sim).mean()),
        "mean_cos_mismatched": float(sim[off].mean()),
        "collapse_std_floor": COLLAPSE_STD,
        "obs_std_min": float(std_o.min()), "obs_std_mean": float(std_o.mean()),
        "act_std_min": float(std_a.min()), "act_std_mean": float(std_a.mean()),
        "obs_collapsed_dims": int((std_o < COLLAPSE_STD).sum()),
        "act_collapsed_dims": int((std_a < COLLAPSE_STD).sum()),
        "dims": int(obs.shape[1]),
        "obs_effective_rank": effective_rank(zo),
        "act_effective_rank": effective_rank(za),
        "raw_obs_std_min": float(obs.std(axis=0).min()), "raw_act_std_min": float(act.std(axis=0).min()),
    }


def nearest_top1(queries: np.ndarray, gallery: np.ndarray) -> float:
    """Fraction of queries whose nearest gallery item (L2 over all trailing axes) is their own pair."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    g = gallery.reshape(len(gallery), -1).astype(np.float64)
    if q.shape != g.shape or len(q) < 2:
        raise ValueError(f"nearest_top1: need >= 2 equal-shaped pairs (got {queries.shape}, {gallery.shape})")
    d = (q * q).sum(1)[:, None] - 2 * q @ g.T + (g * g).sum(1)[None]
    others = np.where(np.eye(len(q), dtype=bool), np.inf, d).min(axis=1)
    return float((np.diag(d) < others).mean())  # a tie with another item is not a hit


def plan_retrieval_ceiling(torch_policy, heldout: HeldOut, act_gt: np.ndarray | None = None,
                           samples: int = 1) -> dict[str, float]:
    """How precisely the observation determines the plan, seen through this policy: its own sampled chunk
    for frame i, used as the query among the B ground-truth chunks (L2). obs-CLS -> act-CLS retrieval cannot
    be expected to resolve plans more finely than the policy that produced the features does. `act_gt`: the
    act-CLS of the ground-truth chunks when the caller has them already (`cls_embeddings`). `samples` > 1 also
    reports the same top-1 for the mean of that many sampled chunks per frame: what the features determine
    once the flow-matching sampler's own spread is averaged out."""
    if samples < 1:
        raise ValueError(f"plan_retrieval_ceiling: samples must be >= 1, got {samples!r}")
    action_dim, length = heldout.chunks[0].shape[1], len(heldout.chunks[0])
    # draw k of every frame before draw k + 1 of any: the first draws are then the same with any `samples`
    draws = np.stack([[torch_policy.predict_chunk(o)[:length, :action_dim] for o in heldout.observations]
                      for _ in range(samples)], axis=1).astype(np.float32)  # [B, samples, T, A]
    if act_gt is None:
        _, act_gt = cls_embeddings(torch_policy, heldout)
    _, act_pred = cls_embeddings(torch_policy, HeldOut(observations=heldout.observations, chunks=list(draws[:, 0])))
    return {**sampled_retrieval(draws, np.stack(heldout.chunks)),
            "act_cls_of_policy_chunk_top1": alignment_metrics(act_pred, act_gt)["retrieval_top1"]}


def sampled_retrieval(draws: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Top-1 of sampled chunks `draws` [B, K, T, A] as queries among the ground truth `gt` [B, T, A]: the
    first draw (whole chunk / first row), and for K > 1 the mean of the K draws."""
    if draws.ndim != 4 or draws.shape[0] != gt.shape[0] or draws.shape[2:] != gt.shape[1:]:
        raise ValueError(f"sampled_retrieval: draws {draws.shape} do not match ground truth {gt.shape}")
    pred = draws[:, 0]
    out = {"policy_chunk_top1": nearest_top1(pred, gt), "policy_first_action_top1": nearest_top1(pred[:, :1], gt[:, :1])}
    if draws.shape[1] > 1:
        mean = draws.mean(axis=1)
        out.update({"samples": int(draws.shape[1]), "policy_mean_chunk_top1": nearest_top1(mean, gt),
                    "policy_mean_first_action_top1": nearest_top1(mean[:, :1], gt[:, :1])})
    return out


def alignment_report(torch_policy, n_episodes: int = 256, seed: int = HELDOUT_BASE_SEED,
                     heldout: HeldOut | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, HeldOut]:
    """(metrics, obs embeddings, act embeddings, held-out data) for a loaded `TorchPolicy`."""
    if heldout is None:
        heldout = collect_heldout(torch_policy.config.chunk_size, n_episodes, seed)
    obs, act = cls_embeddings(torch_policy, heldout)
    metrics = alignment_metrics(obs, act)
    metrics["heldout_seed"] = seed
    return metrics, obs, act, heldout


def format_metrics(m: dict[str, Any]) -> str:
    return (f"retrieval top-1 {m['retrieval_top1']:.3f} (chance {m['chance_top1']:.4f}), "
            f"top-5 {m['retrieval_top5']:.3f} (chance {m['chance_top5']:.4f}), "
            f"AUROC {m['auroc_matched_vs_mismatched']:.3f}, "
            f"min per-dim std obs {m['obs_std_min']:.4f} / act {m['act_std_min']:.4f} "
            f"(collapse floor {m['collapse_std_floor']}), "
            f"effective rank obs {m['obs_effective_rank']:.1f} / act {m['act_effective_rank']:.1f} of {m['dims']}")


def main(argv: list[str] | None = None) -> int:
    from evaluation.cli_args import int_in, non_negative_int, output_file

    parser = argparse.ArgumentParser(description="held-out CLS alignment report")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--episodes", type=int_in(2, 10**6), default=256, help="held-out pairs (one frame per episode)")
    parser.add_argument("--seed", type=non_negative_int, default=HELDOUT_BASE_SEED)
    parser.add_argument("--json", type=output_file, default=None)
    args = parser.parse_args(argv)
    from smolvla_cls.torch_policy import TorchPolicy

    metrics, *_ = alignment_report(TorchPolicy(args.checkpoint), args.episodes, args.seed)
    print(format_metrics(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
