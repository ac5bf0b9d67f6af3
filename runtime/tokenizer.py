"""Instruction text → fixed-length (lang_tokens int64 [1,L], lang_mask bool [1,L]) for the prefix graph.

Mirrors the training-time processor chain (append "\\n", encode with special tokens) but pads to the
exported static length. Results are cached per instruction string: a robot repeats one instruction
for a whole episode, so tokenisation happens once, not per tick. Instructions are capped in UTF-8 bytes
before tokenising (a 5 MB string costs seconds) and in tokens after; a refused instruction is remembered,
so repeating it costs a dictionary look-up, and error messages quote at most a short prefix of it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.artifact_files import ArtifactFileError, confined_path
from runtime.fingerprint import sha256_bytes
from runtime.manifest import ManifestError, TokenizerSpec
from runtime.strict_json import strict_loads

MAX_INSTRUCTION_BYTES = 2048  # ~300 words; exported lang_len is 16..64 tokens, so longer can never fit
_QUOTE = 120  # characters of an instruction quoted in an error message


class InstructionTooLongError(ValueError):
    """The instruction is longer than MAX_INSTRUCTION_BYTES or encodes to more tokens than the exported length."""


class UnknownTokenError(ValueError):
    """The instruction encodes to a token id the prefix graph's embedding table has no row for."""


def quoted(text: str) -> str:
    """A bounded repr of an instruction for messages."""
    return repr(text) if len(text) <= _QUOTE else repr(text[:_QUOTE]) + f"… ({len(text)} characters)"


class InstructionTokenizer:
    """Loads tokenizer.json once; `encode(text)` returns cached read-only (ids, mask) arrays."""

    def __init__(self, path: str | Path, spec: TokenizerSpec, cache_size: int = 64,
                 expected_sha256: str | None = None):
        self.spec = spec
        path = Path(path)
        try:  # parsed from these bytes: what is checked is what is loaded
            data = confined_path(path.parent, path.name).read_bytes()
        except ArtifactFileError as exc:
            raise ManifestError(str(exc)) from None
        except OSError as exc:  # no permission, I/O error: one line naming the file, as Manifest.load says it
            raise ManifestError(f"artifact file '{path.name}' in '{path.parent}' cannot be read ({exc.strerror})") from None
        if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
            raise ManifestError(f"artifact file '{Path(path).name}' changed after the manifest check (SHA-256 "
                                "differs): refused; re-export the artifacts with `make export`")
        try:
            strict_loads(data)  # a key twice: the Rust reader and a Python inspection could disagree
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"artifact file '{path.name}' is not valid JSON ({str(exc)[:200]}); re-export the "
                                "artifacts with `make export`") from None
        try:
            self._tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 — tokenizers raises its own exception types
            raise ManifestError(f"artifact file '{Path(path).name}' is not a loadable tokenizer "
                                f"({str(exc)[:200]}); re-export the artifacts with `make export`") from None
        # padding/truncation are applied here, never by the tokenizer file's own settings
        self._tok.no_padding()
        self._tok.no_truncation()
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray] | Exception] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}")
        if len(text) > MAX_INSTRUCTION_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_INSTRUCTION_BYTES:
            raise InstructionTooLongError(f"instruction {quoted(text)} is longer than {MAX_INSTRUCTION_BYTES} "
                                          "UTF-8 bytes; shorten it")
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            if isinstance(hit, Exception):
                raise hit.with_traceback(None)  # a fresh traceback: repeated raises must not grow one
            return hit
        try:
            out: tuple[np.ndarray, np.ndarray] | Exception = self._encode(text)
        except Exception as exc:  # noqa: BLE001 — remembered, so a repeated bad instruction is not re-tokenised
            out = exc if isinstance(exc, ValueError) else ValueError(f"instruction {quoted(text)} cannot be "
                                                                      f"tokenised ({str(exc)[:200]})")
        self._cache[text] = out
        if len(self._cache) > self._cache_size:  # bounded: a stream of distinct strings cannot grow memory
            self._cache.popitem(last=False)
        if isinstance(out, Exception):
            raise out
        return out

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        full = text + "\n" if spec.append_newline else text
        ids = self._tok.encode(full, add_special_tokens=True).ids
        L = spec.max_length
        if len(ids) > L:
            if not spec.truncation:
                raise InstructionTooLongError(
                    f"instruction {quoted(text)} encodes to {len(ids)} tokens, more than the exported limit "
                    f"max_length={L}; shorten it or re-export with a longer lang_len"
                )
            ids = ids[:L]
        rows = spec.vocab_size
        if rows is not None and ids and max(ids) >= rows:  # would index past the embedding (TensorRT: UB)
            raise UnknownTokenError(f"instruction {quoted(text)} encodes to token id {max(ids)}, but the model's "
                                    f"embedding has {rows} rows (dims.vocab_size); rephrase it or re-export "
                                    "with the VLM's own tokenizer")
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
