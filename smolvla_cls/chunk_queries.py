"""Fast action-chunk look-ups for lerobot datasets: the non-image columns served from memory.

lerobot's `_query_hf_dataset` indexes an Arrow column per sample (~7 ms for a 10-step chunk): at
batch 32 that is ~0.25 s per batch, more than the tiny model's whole optimiser step on 2 CPU cores.
The columns are small (frames x action_dim floats), so they are read once into tensors; the result
is identical (same indices, same stacking, same dtype). Image/video keys keep lerobot's path.

The replacement is an object, not a closure: lerobot 0.6 starts DataLoader workers with "spawn", which
pickles the dataset (and so this object) into each worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from smolvla_cls.lerobot_compat import dataset_reader


class CachedChunkQueries:
    """Stands in for `reader._query_hf_dataset`: cached keys from `columns`, the rest from lerobot."""

    def __init__(self, reader: Any, columns: dict[str, torch.Tensor]):
        self.reader = reader
        self.columns = columns

    def __call__(self, query_indices: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        rest = {k: v for k, v in query_indices.items() if k not in self.columns}
        result = type(self.reader)._query_hf_dataset(self.reader, rest) if rest else {}
        mapping = self.reader._absolute_to_relative_idx
        for key, indices in query_indices.items():
            if key in self.columns:
                rows = indices if mapping is None else [mapping[i] for i in indices]
                result[key] = self.columns[key][torch.as_tensor(rows, dtype=torch.long)]
        return result


def enable_fast_chunk_queries(dataset: Any) -> Any:
    """Serve `dataset`'s non-image delta-timestamp look-ups from memory (in place; returns `dataset`)."""
    reader = dataset_reader(dataset)
    skip = set(dataset.meta.video_keys) | set(dataset.meta.camera_keys)
    keys = [k for k in (reader.delta_indices or {}) if k not in skip]
    if not keys:
        return dataset
    table = reader.hf_dataset.with_format(None).data
    columns = {k: torch.from_numpy(np.asarray(table.column(k).to_pylist(), dtype=np.float32)) for k in keys}
    reader._query_hf_dataset = CachedChunkQueries(reader, columns)
    return dataset
