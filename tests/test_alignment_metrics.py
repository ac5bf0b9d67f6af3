"""Held-out alignment metrics (smolvla_cls/alignment.py): properties that need no model."""

import numpy as np
import pytest

from smolvla_cls.alignment import alignment_metrics, auroc, nearest_top1


def test_nearest_top1_is_one_for_identical_pairs_and_falls_with_noise():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(64, 10, 2))
    assert nearest_top1(gt, gt) == 1.0
    noisy = gt + rng.normal(scale=3.0, size=gt.shape)
    assert nearest_top1(noisy, gt) < 0.9
    # a one-dimensional family (direction only), queried with a small angle error: top-1 collapses
    angles = rng.uniform(0, 2 * np.pi, 256)
    plans = np.stack([np.cos(angles), np.sin(angles)], axis=1)[:, None, :].repeat(10, axis=1)
    off = angles + rng.normal(scale=np.deg2rad(5), size=256)
    queries = np.stack([np.cos(off), np.sin(off)], axis=1)[:, None, :].repeat(10, axis=1)
    assert nearest_top1(queries, plans) < 0.4


def test_nearest_top1_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="nearest_top1"):
        nearest_top1(np.zeros((4, 3)), np.zeros((5, 3)))


def test_retrieval_and_auroc_perfect_for_equal_embeddings_and_chance_for_shuffled():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 16))
    m = alignment_metrics(x, x)
    assert m["retrieval_top1"] == 1.0 and m["auroc_matched_vs_mismatched"] > 0.99
    shuffled = alignment_metrics(x, rng.permutation(x))
    assert shuffled["retrieval_top1"] < 0.1
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.5)


def test_sampled_retrieval_mean_of_draws_beats_one_draw():
    """Averaging K independent sampler draws shrinks their spread, so the mean finds its own chunk at least
    as often as one draw; exact draws find it always."""
    from smolvla_cls.alignment import sampled_retrieval

    rng = np.random.default_rng(0)
    gt = rng.normal(size=(64, 5, 2))
    exact = sampled_retrieval(np.repeat(gt[:, None], 3, axis=1), gt)
    assert exact["policy_chunk_top1"] == exact["policy_mean_chunk_top1"] == 1.0
    assert exact["policy_first_action_top1"] == exact["policy_mean_first_action_top1"] == 1.0
    noisy = sampled_retrieval(gt[:, None] + rng.normal(scale=0.6, size=(64, 16, 5, 2)), gt)
    assert noisy["samples"] == 16
    assert noisy["policy_mean_first_action_top1"] > noisy["policy_first_action_top1"]
    assert noisy["policy_mean_chunk_top1"] >= noisy["policy_chunk_top1"]
    assert "samples" not in sampled_retrieval(gt[:, None], gt)
    with pytest.raises(ValueError, match="do not match"):
        sampled_retrieval(gt[:, None, :3], gt)


@pytest.mark.parametrize("clusters", [1, 4])
def test_collapsed_embeddings_never_score_ties_as_hits(clusters):
    """An act-CLS collapsed onto a few points ties with every pair in its cluster: no hit, whatever the order."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(clusters, 16))
    x = centres[np.arange(64) % clusters]
    m = alignment_metrics(x, x)
    assert m["retrieval_top1"] == 0.0 and m["retrieval_top1_act_to_obs"] == 0.0
    assert m["retrieval_top5"] == (1.0 if 64 // clusters <= 5 else 0.0)
    assert nearest_top1(x, x) == 0.0
    y = rng.normal(size=(64, 16))
    y[1] = y[0]  # one duplicated gallery item: its two queries lose their hit, the others keep theirs
    assert nearest_top1(y, y) == pytest.approx(62 / 64)
