"""Cross-checks of what the export pairs with the checkpoint: the tokenizer against the VLM's embedding table,
and the dataset (robot section) against the stats the checkpoint was trained with. Each refusal is one
`ExportInputError` line naming what differs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from export.accuracy_gates import token_id_limit
from export.graphs.checkpoint_loading import ExportInputError

COMPARED_STATS = ("mean", "std", "min", "max")
STATS_RTOL, STATS_ATOL = 1e-5, 1e-6  # the checkpoint keeps the dataset's stats as float32


def check_vocab(tokenizer_file: Path, embedding_rows: int) -> None:
    """Every id the tokenizer can emit must index the prefix graph's embedding table (ids >= rows fail every
    tick under onnxruntime and are an out-of-range Gather, undefined behaviour, under TensorRT)."""
    limit = token_id_limit(tokenizer_file)
    if limit is None:
        raise ExportInputError(f"tokenizer {tokenizer_file}: not a readable tokenizer.json")
    if limit > embedding_rows:
        raise ExportInputError(f"tokenizer {tokenizer_file}: ids up to {limit - 1} (vocabulary incl. added tokens), "
                               f"but the VLM's input embedding has {embedding_rows} rows: use the tokenizer the VLM "
                               "was built with (vlm_model_name), or resize its embeddings and retrain")


def check_dataset_stats(root: Path, stats: dict, keys: tuple[str, ...]) -> None:
    """The dataset's meta/stats.json must hold the stats the checkpoint normalised with (else the robot section
    would come from another dataset than the one trained on); a dataset without stats is noted, not refused."""
    path = Path(root) / "meta" / "stats.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        print(f"[export] {path} is missing or unreadable: cannot check that '{root}' is the training dataset",
              file=sys.stderr)
        return
    for key in keys:
        for stat in COMPARED_STATS:
            if stat not in (data.get(key) or {}) or stat not in (stats.get(key) or {}):
                continue
            theirs = np.asarray(data[key][stat], dtype=np.float64).reshape(-1)
            ours = np.asarray(stats[key][stat], dtype=np.float64).reshape(-1)
            same = theirs.shape == ours.shape and np.allclose(theirs, ours, rtol=STATS_RTOL, atol=STATS_ATOL)
            if not same:
                raise ExportInputError(
                    f"dataset '{root}': '{key}' {stat} {np.round(theirs, 6).tolist()} differs from the checkpoint's "
                    f"normaliser {np.round(ours, 6).tolist()}: not the dataset this checkpoint was trained on; pass "
                    "--dataset-root with the training dataset")
