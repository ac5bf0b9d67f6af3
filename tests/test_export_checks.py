"""The export refuses a tokenizer whose ids exceed the VLM's embedding table (the runtime would feed them to
the prefix graph's Gather: an error every tick under onnxruntime, undefined behaviour under TensorRT)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.accuracy_gates import token_id_limit, vocab_size
from export.graphs.checkpoint_loading import ExportInputError
from export.graphs.export_checks import check_vocab
from export.graphs.onnx_export import embedding_rows, export_artifacts
from tests.test_export import _loaded


def _with_words(src: Path, dst: Path, extra: int, added_id: int | None = None) -> Path:
    """A copy of the VLM folder whose tokenizer.json knows `extra` more words (ids after its largest)."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    top = max(vocab.values())
    vocab.update({f"zzword{i}": top + 1 + i for i in range(extra)})
    if added_id is not None:
        tok["added_tokens"].append({**tok["added_tokens"][-1], "id": added_id, "content": "<extra>"})
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


@pytest.fixture(scope="module")
def loaded():
    return _loaded()


def test_token_id_limit_counts_vocabulary_and_added_tokens(loaded, tmp_path):
    vlm = Path(loaded.policy.config.vlm_model_name)
    base = token_id_limit(vlm / "tokenizer.json")
    assert base is not None and 1 < base <= embedding_rows(loaded.policy) == 128
    assert token_id_limit(_with_words(vlm, tmp_path / "a", 5) / "tokenizer.json") == base + 5
    assert token_id_limit(_with_words(vlm, tmp_path / "b", 0, added_id=300) / "tokenizer.json") == 301
    (tmp_path / "bad.json").write_text("{")
    assert token_id_limit(tmp_path / "bad.json") is None


@pytest.mark.parametrize("rows_minus_limit", [-1, 0, 1])
def test_check_vocab_refuses_ids_past_the_embedding_rows(loaded, tmp_path, rows_minus_limit):
    tok = Path(loaded.policy.config.vlm_model_name) / "tokenizer.json"
    rows = token_id_limit(tok) + rows_minus_limit
    if rows_minus_limit < 0:
        with pytest.raises(ExportInputError, match=f"ids up to {rows}.*{rows} rows"):
            check_vocab(tok, rows)
    else:
        check_vocab(tok, rows)


def test_export_refuses_a_bigger_tokenizer_before_writing(loaded, tmp_path):
    vlm = Path(loaded.policy.config.vlm_model_name)
    extra = 128 - token_id_limit(vlm / "tokenizer.json") + 42  # ids up to 169, the table has 128 rows
    big = _with_words(vlm, tmp_path / "vlm_big", extra)
    loaded.policy.config.vlm_model_name = str(big)
    try:
        with pytest.raises(ExportInputError, match="ids up to 169.*128 rows"):
            export_artifacts(loaded, tmp_path / "out", calibrate=False, progress=False)
    finally:
        loaded.policy.config.vlm_model_name = str(vlm)
    assert not (tmp_path / "out").exists()


def test_accuracy_gates_draw_ids_below_the_recorded_rows(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 499}}, "added_tokens": []}))
    assert vocab_size(tmp_path, {"tokenizer": {"file": "tokenizer.json"}}) == 500
    assert vocab_size(tmp_path, {"tokenizer": {"file": "tokenizer.json"}, "dims": {"vocab_size": 64}}) == 64
    assert vocab_size(tmp_path, {"tokenizer": {"file": "missing.json"}}) == 1000
