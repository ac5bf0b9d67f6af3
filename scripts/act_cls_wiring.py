"""Record what act-CLS encodes, for one or more checkpoints side by side (issue 20 acceptance numbers).

Per checkpoint (its `act_cls_wiring` decides how act-CLS is computed, exactly as training and export do):
- sensitivity: on B held-out (observation, ground-truth chunk) pairs, the mean L2 change of act-CLS (mean over
  CLS tokens, projected, not normalised) when the plan changes (obs fixed: chunk of another frame) and when the
  observation changes (plan fixed: observation of another frame); ratio = plan change / obs change (target >= 5);
- alignment (smolvla_cls.alignment): retrieval top-1 obs -> act, AUROC matched vs mismatched, effective rank,
  and the retrieval ceiling: top-1 of the policy's own sampled chunk among the ground-truth chunks;
- consistency calibration (export.graphs.gate_calibration, what the export writes into the manifest): AUROC of
  the consistency distance, "plan still valid" vs "target moved", and of the drift distance for reference, on
  the policy's own plans (the manifest's rule) and, in brackets, on the scripted expert's (the earlier rule);
- obs-CLS drift (`--drift N`, N perturbed held-out episodes): the runtime's cosine distance of obs-CLS between
  the frame before and the frame after the target jump (relevant), and between the frame before the jump and
  the same frame under a brightness / colour / noise-burst change (irrelevant: simtask/image_changes.py, the
  benchmark's ranges);
  ratio = mean relevant / mean irrelevant (higher: the embedding ignores more of what does not matter).

    PYTHONPATH=. python scripts/act_cls_wiring.py --checkpoint seed=/path/a --checkpoint plan_only=/path/b \
        --json docs/img/act_cls_wiring.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smolvla_cls.alignment import (
    HELDOUT_BASE_SEED,
    HeldOut,
    alignment_metrics,
    cls_embeddings,
    collect_heldout,
    plan_retrieval_ceiling,
)


def sensitivity(torch_policy, heldout: HeldOut, seed: int = 0) -> dict:
    """Mean L2 change of act-CLS when only the plan / only the observation changes (derangement pairing)."""
    n = len(heldout)
    perm = np.roll(np.arange(n), 1 + np.random.default_rng(seed).integers(0, n - 1))  # j != i for every i
    base = cls_embeddings(torch_policy, heldout)[1]
    new_plan = HeldOut(observations=heldout.observations, chunks=[heldout.chunks[j] for j in perm])
    new_obs = HeldOut(observations=[heldout.observations[j] for j in perm], chunks=heldout.chunks)
    d_plan = float(np.linalg.norm(cls_embeddings(torch_policy, new_plan)[1] - base, axis=1).mean())
    d_obs = float(np.linalg.norm(cls_embeddings(torch_policy, new_obs)[1] - base, axis=1).mean())
    return {"act_change_plan": d_plan, "act_change_obs": d_obs,
            "ratio_plan_over_obs": d_plan / d_obs if d_obs > 0 else float("inf")}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def obs_drift(torch_policy, n_episodes: int, seed: int = HELDOUT_BASE_SEED + 1) -> dict:
    """Mean obs-CLS cosine distance for a relevant change (target jump) and each irrelevant image change."""
    from simtask import ReachEnv, ScriptedExpert, TaskConfig, episode_seeds, run_expert_episode
    from simtask.config import IMAGE_KEY
    from simtask.image_changes import BENCHMARK, KINDS, perturb_uint8_hwc

    env, rng = ReachEnv(TaskConfig()), np.random.default_rng([seed, 0xD1F7])
    expert = ScriptedExpert(noise_std=0.0, seed=seed)
    before, after = [], []
    for s in episode_seeds(seed, n_episodes, stream="eval"):
        ep = run_expert_episode(env, expert, s, perturb=True)
        if ep.perturb_tick is None or not 1 <= ep.perturb_tick < len(ep.observations):
            continue
        before.append(ep.observations[ep.perturb_tick - 1])
        after.append(ep.observations[ep.perturb_tick])
    frames = {"relevant: target jump": after}
    for kind in KINDS:
        frames[f"irrelevant: {kind}"] = [{**o, IMAGE_KEY: perturb_uint8_hwc(o[IMAGE_KEY], kind, rng, BENCHMARK)} for o in before]
    zeros = np.zeros((torch_policy.config.chunk_size, 2), dtype=np.float32)
    embed = lambda obs: _unit(cls_embeddings(torch_policy, HeldOut(observations=obs, chunks=[zeros] * len(obs)))[0])
    base = embed(before)
    out = {name: float((1.0 - (embed(obs) * base).sum(axis=1)).mean()) for name, obs in frames.items()}
    irrelevant = [v for k, v in out.items() if k.startswith("irrelevant")]
    out["n_pairs"] = len(before)
    out["ratio_relevant_over_irrelevant"] = out["relevant: target jump"] / max(float(np.mean(irrelevant)), 1e-12)
    return out


def consistency_calibration(checkpoint: Path, episodes: int) -> dict:
    """The export's gate calibration on this checkpoint (same code, same held-out rollouts)."""
    from export.graphs.checkpoint_loading import load_checkpoint
    from export.graphs.gate_calibration import capped_horizon
    from export.graphs.onnx_export import _tokenizer_fn, simtask_gate_calibration

    loaded = load_checkpoint(checkpoint)
    cfg = loaded.policy.config
    _, tokenize = _tokenizer_fn(Path(cfg.vlm_model_name), cfg.tokenizer_max_length)
    horizon = capped_horizon("auto", "auto", cfg.n_action_steps)  # the default export's (its gate's cap)
    out = {}
    for plans in ("policy", "expert"):  # policy: what the manifest gets; expert: the earlier rule, for comparison
        gate = simtask_gate_calibration(loaded, tokenize, episodes, horizon, plans=plans)
        for metric in ("consistency", "drift"):
            key = metric if plans == "policy" else f"{metric}_expert_plans"
            out[key] = {k: gate[metric][k] for k in ("auroc", "n_unchanged", "n_changed", "default_threshold")}
    return out


def measure(label: str, checkpoint: Path, episodes: int, calib_episodes: int, drift_episodes: int = 0,
            ceiling_samples: int = 1) -> dict:
    from smolvla_cls.torch_policy import TorchPolicy

    started = time.time()
    tp = TorchPolicy(checkpoint)
    heldout = collect_heldout(tp.config.chunk_size, episodes, HELDOUT_BASE_SEED)
    obs, act = cls_embeddings(tp, heldout)
    align = alignment_metrics(obs, act)
    row = {"label": label, "checkpoint": str(checkpoint), "act_cls_wiring": tp.config.act_cls_wiring,
           "heldout_pairs": len(heldout), **sensitivity(tp, heldout),
           "retrieval_top1": align["retrieval_top1"], "retrieval_top5": align["retrieval_top5"],
           "auroc_matched_vs_mismatched": align["auroc_matched_vs_mismatched"],
           "obs_effective_rank": align["obs_effective_rank"], "act_effective_rank": align["act_effective_rank"],
           "dims": align["dims"], "ceiling": plan_retrieval_ceiling(tp, heldout, act, ceiling_samples)}
    if calib_episodes > 0:
        row["calibration"] = consistency_calibration(checkpoint, calib_episodes)
    if drift_episodes > 0:
        row["obs_drift"] = obs_drift(tp, drift_episodes)
    row["seconds"] = round(time.time() - started, 1)
    return row


def format_row(r: dict) -> str:
    cal = r.get("calibration", {})
    auc = lambda m: "n/a" if m not in cal or cal[m]["auroc"] is None else f"{cal[m]['auroc']:.3f}"
    return (f"| {r['label']} ({r['act_cls_wiring']}) | {r['act_change_plan']:.4f} / {r['act_change_obs']:.4f} = "
            f"{r['ratio_plan_over_obs']:.2f}x | {r['retrieval_top1']:.3f} | {r['ceiling']['policy_chunk_top1']:.3f} | "
            f"{auc('consistency')} ({auc('consistency_expert_plans')}) | {auc('drift')} ({auc('drift_expert_plans')}) | "
            f"{r['act_effective_rank']:.1f} / {r['obs_effective_rank']:.1f} of {r['dims']} |")


def main(argv: list[str] | None = None) -> int:
    from evaluation.cli_args import int_in, non_negative_int, output_file, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=DIR",
                        help="a checkpoint to measure, labelled (repeat for a side-by-side table)")
    parser.add_argument("--episodes", type=int_in(3, 10**6), default=256, help="held-out pairs (one frame per episode)")
    parser.add_argument("--calib-episodes", type=non_negative_int, default=24, help="gate-calibration rollouts (0: skip)")
    parser.add_argument("--drift", type=non_negative_int, default=0, metavar="N",
                        help="obs-CLS drift, relevant vs irrelevant changes, on N perturbed episodes (0: skip)")
    parser.add_argument("--ceiling-samples", type=positive_int, default=1, metavar="K",
                        help="also the retrieval ceiling of the mean of K sampled chunks per frame (K > 1)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--json", type=output_file, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"--checkpoint {item!r}: expected LABEL=DIR")
        rows.append(measure(label, Path(path), args.episodes, args.calib_episodes, args.drift, args.ceiling_samples))
        print(f"[act_cls_wiring] {label}: done in {rows[-1]['seconds']} s", file=sys.stderr)
    print("| checkpoint (wiring) | act-CLS change: plan / obs = ratio | retrieval top-1 | ceiling: policy chunk top-1 | "
          "consistency AUROC | "
          "drift AUROC | eff. rank act / obs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(format_row(r))
    for r in (r for r in rows if "obs_drift" in r):
        d = r["obs_drift"]
        print(f"obs-CLS drift {r['label']}: " + ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k != "n_pairs")
              + f" ({d['n_pairs']} pairs)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"episodes": args.episodes, "calib_episodes": args.calib_episodes,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
