"""Instruction text → fixed-length (lang_tokens int64 [1,L], lang_mask bool [1,L]) for the prefix graph.

Mirrors the training-time processor chain (append "\\n", encode with special tokens) but pads to the
exported static length. Results are cached per instruction string: a robot repeats one instruction
for a whole episode, so tokenisation happens once, not per tick.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.manifest import TokenizerSpec


class InstructionTooLongError(ValueError):
    """The instruction encodes to more tokens than the exported language length."""


class InstructionTokenizer:
    """Loads tokenizer.json once; `encode(text)` returns cached read-only (ids, mask) arrays."""

    def __init__(self, path: str | Path, spec: TokenizerSpec, cache_size: int = 64):
        self.spec = spec
        self._tok = Tokenizer.from_file(str(path))
        # padding/truncation are applied here, never by the tokenizer file's own settings
        self._tok.no_padding()
        self._tok.no_truncation()
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        out = self._encode(text)
        self._cache[text] = out
        if len(self._cache) > self._cache_size:  # bounded: a stream of distinct strings cannot grow memory
            self._cache.popitem(last=False)
        return out

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}")
        spec = self.spec
        full = text + "\n" if spec.append_newline else text
        ids = self._tok.encode(full, add_special_tokens=True).ids
        L = spec.max_length
        if len(ids) > L:
            if not spec.truncation:
                raise InstructionTooLongError(
                    f"instruction {text!r} encodes to {len(ids)} tokens, more than the exported limit "
                    f"max_length={L}; shorten it or re-export with a longer lang_len"
                )
            ids = ids[:L]
        n = len(ids)
        tokens = np.full((1, L), spec.pad_token_id, dtype=np.int64)
        mask = np.zeros((1, L), dtype=np.bool_)
        if spec.padding_side == "right":
            tokens[0, :n] = ids
            mask[0, :n] = True
        else:
            tokens[0, L - n:] = ids
            mask[0, L - n:] = True
        tokens.flags.writeable = False  # shared via the cache: nobody may mutate it
        mask.flags.writeable = False
        return tokens, mask
