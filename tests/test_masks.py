"""Property tests of the CLS-aware mask rules on random lengths, cameras, padding and windows."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lerobot.policies.smolvla.modeling_smolvla import make_att_2d_masks

from smolvla_cls.masks import (
    ACTION,
    PREFIX,
    PREFIX_CLS,
    SUFFIX_CLS,
    make_att_2d_masks_with_cls,
    position_ids_with_cls,
    token_kinds,
)


@st.composite
def layouts(draw):
    b = draw(st.integers(1, 3))
    np_ = draw(st.integers(0, 3))
    img = draw(st.integers(1, 3)) * draw(st.sampled_from([1, 4, 16]))
    lang = draw(st.integers(1, 8))
    chunk = draw(st.integers(0, 8))
    ns = draw(st.integers(0, 3)) if chunk else 0
    window = draw(st.one_of(st.none(), st.integers(1, max(1, chunk // 2)))) if chunk else None
    lang_valid = [draw(st.integers(1, lang)) for _ in range(b)]
    return b, np_, img, lang, chunk, ns, window, lang_valid


def build(b, np_, img, lang, chunk, ns, window, lang_valid):
    prefix_len = np_ + img + lang + 1
    n = prefix_len + chunk + ns
    pad = torch.ones(b, n, dtype=torch.bool)
    for i, valid in enumerate(lang_valid):
        pad[i, np_ + img + valid: np_ + img + lang] = False
    att = torch.zeros(b, n, dtype=torch.int64)
    att[:, prefix_len - 1] = 1  # state token
    att[:, prefix_len:] = 1  # actions (and suffix CLS) causal
    mask = make_att_2d_masks_with_cls(pad, att, prefix_len=prefix_len, num_prefix_cls=np_, num_suffix_cls=ns,
                                      suffix_cls_window=window)
    kinds = token_kinds(prefix_len, np_, chunk + ns, ns)
    return mask, pad, att, kinds, prefix_len


@settings(max_examples=120, deadline=None)
@given(layouts())
def test_cls_rows_and_columns(layout):
    b, _, _, _, chunk, ns, window, _ = layout
    mask, pad, _, kinds, prefix_len = build(*layout)
    pc, pr, _, sc = (kinds == k for k in (PREFIX_CLS, PREFIX, ACTION, SUFFIX_CLS))
    for i in range(b):
        m, valid = mask[i], pad[i]
        # prefix CLS rows: exactly the valid prefix (CLS + images + language + state), nothing after it
        for r in torch.nonzero(pc).flatten():
            assert torch.equal(m[r], (pc | pr) & valid)
        # prefix CLS columns: seen by prefix CLS rows only
        assert not m[~pc][:, pc].any()
        # suffix CLS rows: no prefix token at all; the windowed actions and the suffix CLS tokens
        if ns:
            want = torch.zeros_like(valid)
            idx = torch.arange(chunk)
            in_window = torch.ones(chunk, dtype=torch.bool) if window is None else (idx < window) | (idx >= chunk - window)
            want[prefix_len: prefix_len + chunk] = in_window
            want |= sc
            for r in torch.nonzero(sc).flatten():
                assert torch.equal(m[r], want)
                assert not m[r, :prefix_len].any()
            # suffix CLS columns: seen by suffix CLS rows only (actions never see them)
            assert not m[~sc][:, sc].any()


@settings(max_examples=80, deadline=None)
@given(layouts())
def test_real_tokens_follow_smolvla_rule(layout):
    """Among non-CLS tokens the mask is exactly lerobot's `make_att_2d_masks`."""
    mask, pad, att, kinds, _ = build(*layout)
    real = (kinds == PREFIX) | (kinds == ACTION)
    plain = make_att_2d_masks(pad[:, real], att[:, real])
    assert torch.equal(mask[:, real][:, :, real], plain)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_positions_of_real_tokens_are_plain_smolvla(layout):
    _, np_, *_ = layout
    _, pad, _, kinds, _ = build(*layout)
    pos = position_ids_with_cls(pad, np_)
    real = kinds != PREFIX_CLS
    plain = torch.cumsum(pad[:, real].long(), dim=1) - 1
    assert torch.equal(pos[:, real], plain.clamp(min=0))
    assert (pos[:, kinds == PREFIX_CLS] == 0).all()


def test_layout_errors_name_the_sizes():
    pad = torch.ones(1, 5, dtype=torch.bool)
    try:
        make_att_2d_masks_with_cls(pad, pad.long(), prefix_len=6, num_prefix_cls=1)
    except ValueError as e:
        assert "prefix_len=6" in str(e)
    else:
        raise AssertionError("expected ValueError")
