"""Instruction tokenisation: special tokens, newline, right padding, mask, length limit, caching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import VOCAB, cached_fake_artifacts
except ImportError:
    from fake_artifacts import VOCAB, cached_fake_artifacts

from runtime.manifest import Manifest
from runtime.tokenizer import InstructionTokenizer, InstructionTooLongError, UnknownTokenError

WORDS = ["reach", "the", "red", "green", "blue", "target"]


@pytest.fixture(scope="module")
def manifest():
    return Manifest.load(cached_fake_artifacts())


@pytest.fixture(scope="module")
def tok(manifest):
    return InstructionTokenizer(manifest.tokenizer_path, manifest.tokenizer)


def test_known_instruction(tok):
    ids, mask = tok.encode("reach the red target")
    bos, nl = VOCAB.index("<s>"), VOCAB.index("\n")
    want = [bos, VOCAB.index("reach"), VOCAB.index("the"), VOCAB.index("red"), VOCAB.index("target"), nl, 0, 0]
    assert ids.dtype == np.int64 and mask.dtype == np.bool_
    assert ids.shape == mask.shape == (1, 8)
    assert ids[0].tolist() == want
    assert mask[0].tolist() == [True] * 6 + [False] * 2


def test_newline_only_when_manifest_says(manifest):
    spec = dataclasses.replace(manifest.tokenizer, append_newline=False)
    ids, mask = InstructionTokenizer(manifest.tokenizer_path, spec).encode("reach the red target")
    assert VOCAB.index("\n") not in ids[0].tolist() and int(mask.sum()) == 5


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=10))
def test_padding_and_mask_properties(tok, words):
    text = " ".join(words)
    n = len(words) + 2  # <s> + words + "\n"
    if n > 8:
        with pytest.raises(InstructionTooLongError) as exc:
            tok.encode(text)
        assert repr(text) in str(exc.value) and "max_length=8" in str(exc.value)
        return
    ids, mask = tok.encode(text)
    assert int(mask.sum()) == n
    assert mask[0, :n].all() and not mask[0, n:].any()  # right padding: real tokens first
    assert (ids[0, n:] == 0).all()  # pad_token_id
    assert ids[0, 0] == VOCAB.index("<s>") and ids[0, n - 1] == VOCAB.index("\n")


def test_left_padding(manifest):
    spec = dataclasses.replace(manifest.tokenizer, padding_side="left")
    ids, mask = InstructionTokenizer(manifest.tokenizer_path, spec).encode("reach the red target")
    assert mask[0].tolist() == [False] * 2 + [True] * 6 and ids[0, :2].tolist() == [0, 0]


def test_truncation_when_allowed(manifest):
    spec = dataclasses.replace(manifest.tokenizer, truncation=True)
    ids, mask = InstructionTokenizer(manifest.tokenizer_path, spec).encode(" ".join(["red"] * 20))
    assert mask.all() and ids.shape == (1, 8)


def test_cached_per_instruction_and_read_only(tok):
    a = tok.encode("reach the blue target")
    b = tok.encode("reach the blue target")
    assert a[0] is b[0] and a[1] is b[1]
    with pytest.raises(ValueError):
        a[0][0, 0] = 5  # cache entries cannot be corrupted by a caller


def test_cache_is_bounded(manifest):
    t = InstructionTokenizer(manifest.tokenizer_path, manifest.tokenizer, cache_size=4)
    for w in WORDS:
        t.encode(w)
    assert len(t._cache) == 4


def test_unknown_words_map_to_unk(tok):
    ids, _ = tok.encode("reach the purple target")
    assert VOCAB.index("[UNK]") in ids[0].tolist()


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5), rows=st.integers(1, len(VOCAB) + 2))
def test_ids_at_or_past_the_embedding_rows_are_refused(manifest, words, rows):
    """dims.vocab_size = the prefix graph's embedding rows: an id >= rows would index past the table."""
    text = " ".join(words)
    plain = InstructionTokenizer(manifest.tokenizer_path, manifest.tokenizer).encode(text)[0]
    real = plain[0, : int((plain != 0).sum())]
    spec = dataclasses.replace(manifest.tokenizer, vocab_size=rows)
    tok = InstructionTokenizer(manifest.tokenizer_path, spec)
    if int(real.max()) >= rows:
        with pytest.raises(UnknownTokenError, match=f"token id {int(real.max())}.*{rows} rows"):
            tok.encode(text)
    else:
        assert np.array_equal(tok.encode(text)[0], plain)


def test_out_of_vocabulary_task_is_an_observation_error_naming_task(tmp_path):
    """Through the policy: the error type of every bad instruction, naming `task`; a table with a row for
    every id (and an older manifest without vocab_size) steps as before."""
    from runtime.observation import ObservationError
    from runtime.policy import EdgePolicy

    try:
        from tests.fake_artifacts import build_fake_artifacts
    except ImportError:
        from fake_artifacts import build_fake_artifacts
    obs = {"observation.images.top": np.zeros((64, 64, 3), np.uint8), "observation.state": np.full(2, 0.5, np.float32),
           "task": "reach the red target"}
    short = build_fake_artifacts(tmp_path / "a", edit_manifest=lambda m: m["dims"].update(vocab_size=len(VOCAB) - 1))
    with pytest.raises(ObservationError, match=f"'task'.*token id {len(VOCAB) - 1}") as exc:  # "\n", appended
        EdgePolicy(short, backend="onnxruntime").step(obs)
    assert exc.value.field == "task"
    full = build_fake_artifacts(tmp_path / "b", edit_manifest=lambda m: m["dims"].update(vocab_size=len(VOCAB)))
    assert EdgePolicy(full, backend="onnxruntime").step(obs).shape == (2,)
    old = EdgePolicy(build_fake_artifacts(tmp_path / "c"), backend="onnxruntime")
    assert old.manifest.tokenizer.vocab_size is None and old.step(obs).shape == (2,)
