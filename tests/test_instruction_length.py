"""Dataset instructions past the language length: found with the same count the runtime refuses by, and named."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.manifest import TokenizerSpec
from runtime.tokenizer import InstructionTokenizer, InstructionTooLongError
from smolvla_cls.instruction_length import dataset_tasks, overlong_instructions, warn_overlong
from smolvla_cls.presets import POLICY_OVERRIDES, materialize_preset

WORDS = ["reach", "the", "red", "green", "blue", "target", "please", "zebra"]  # "zebra": <unk>, one token
MAX_LEN = POLICY_OVERRIDES["tiny"]["tokenizer_max_length"]


@pytest.fixture(scope="module")
def preset_tokenizers():
    from transformers import AutoTokenizer

    folder = materialize_preset("tiny")
    hf = AutoTokenizer.from_pretrained(str(folder))
    spec = TokenizerSpec(file="tokenizer.json", max_length=MAX_LEN, pad_token_id=int(hf.pad_token_id),
                         padding_side="right", append_newline=True, truncation=False)
    return hf, InstructionTokenizer(folder / "tokenizer.json", spec)


def _write_tasks(root, tasks):
    (root / "meta").mkdir(parents=True)
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(
        root / "meta" / "tasks.parquet")


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=12))
def test_flagged_exactly_when_the_runtime_refuses(preset_tokenizers, words):
    hf, runtime_tok = preset_tokenizers
    text = " ".join(words)
    flagged = bool(overlong_instructions([text], hf, MAX_LEN))
    try:
        runtime_tok.encode(text)
        refused = False
    except InstructionTooLongError:
        refused = True
    assert flagged == refused


def test_dataset_tasks_and_warning_name_the_instruction(tmp_path, capsys, preset_tokenizers):
    hf, _ = preset_tokenizers
    long_text = "please reach the red target near the blue disc now"
    _write_tasks(tmp_path, ["reach the red target", long_text])
    assert dataset_tasks(tmp_path) == ["reach the red target", long_text]
    found = warn_overlong("export", tmp_path, hf, MAX_LEN)
    assert [t for t, _ in found] == [long_text]
    err = capsys.readouterr().err
    assert "export: 1 of 2 dataset instructions" in err and repr(long_text) in err and "tokenizer_max_length" in err


def test_short_instructions_and_no_task_table_are_silent(tmp_path, capsys, preset_tokenizers):
    hf, _ = preset_tokenizers
    assert warn_overlong("train", tmp_path, hf, MAX_LEN) == []  # no meta/tasks.parquet
    _write_tasks(tmp_path / "ds", ["reach the red target"])
    assert warn_overlong("train", tmp_path / "ds", hf, MAX_LEN) == []
    assert capsys.readouterr().err == ""
