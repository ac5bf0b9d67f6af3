"""Accuracy gates shared by the derived folders (fp16/bf16 lowering, int8 quantization) and the TensorRT engine
check: cosine gates per precision, fresh random validation inputs, the Euler chunk, and the bound on how far a
derivation may move the embeddings the run-time gates read — so every derived folder is judged the same way.

A derived folder keeps the fp32 export's calibrated gate thresholds (manifest `gate`). They stay valid only while
the embeddings they compare barely move: obs-CLS (read by drift, jump and consistency) and the plan encoder's
act-CLS (read by consistency). Each may move (cosine distance of the embedding, `runtime.gate.embed`) by at most
`EMBEDDING_SHARE` of the smallest calibrated threshold among the gates that read it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.gate import MAX_COSINE_DISTANCE, cosine_distance, embed

CHUNK = "chunk"
EMBEDDING_SHARE = 0.1  # a gate embedding may move by at most this share of the smallest threshold reading it
# gate embedding row name -> (graph, output it is made from, label, the calibrated gates that read it)
GATE_EMBEDDINGS = {"obs_emb": ("prefix", "obs_cls", "obs-CLS", ("drift", "jump", "consistency")),
                   "act_emb": ("plan_encoder", "act_cls", "act-CLS", ("consistency",))}
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class AccuracyGateError(RuntimeError):
    """A derived folder misses an accuracy gate; the message says which (CLI: exit 1, nothing written)."""


@dataclass(frozen=True)
class Gate:
    """Minimum cosine similarity for one engine's outputs and for the whole chunk."""

    per_engine: float
    chunk: float


GATES = {"fp32": Gate(0.9999, 0.9999), "fp16": Gate(0.999, 0.99), "bf16": Gate(0.999, 0.99)}


@dataclass(frozen=True)
class Comparison:
    """One compared tensor: where it comes from, its cosine, its max abs error, the gate it must meet, and the
    ratio of its norm to the reference's (a uniformly scaled output keeps cosine 1: the length is gated too)."""

    graph: str
    tensor: str
    cosine: float
    max_abs: float
    gate: float
    norm_ratio: float = 1.0

    @property
    def passed(self) -> bool:
        # the length may differ by what the cosine gate allows in angle: two equal-norm vectors at cosine c
        # differ by sqrt(2 (1 - c)) of their norm. NaN fails both comparisons.
        return self.cosine >= self.gate and abs(self.norm_ratio - 1.0) <= math.sqrt(2.0 * (1.0 - self.gate))

    def rank(self) -> tuple[bool, float]:
        """Sort key, worst first: failing rows, then the lowest cosine (NaN lowest of all)."""
        return self.passed, -math.inf if math.isnan(self.cosine) else self.cosine


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened in float64; two all-zero tensors count as identical."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def compare(graph: str, tensor: str, got: np.ndarray, ref: np.ndarray, precision: str) -> Comparison:
    """Compare one output; bool tensors (prefix_pad) must match exactly (cosine 1 or 0)."""
    gate = GATES[precision]
    limit = gate.chunk if graph == CHUNK else gate.per_engine
    if ref.dtype == np.bool_:
        same = bool(np.array_equal(got.astype(bool), ref))
        return Comparison(graph, tensor, 1.0 if same else 0.0, 0.0 if same else 1.0, limit)
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    return Comparison(graph, tensor, cosine(got, ref), diff, limit, norm_ratio(got, ref))


def norm_ratio(got: np.ndarray, ref: np.ndarray) -> float:
    """‖got‖ / ‖ref‖ in float64; 1 when both are zero, inf when only the reference is."""
    g = float(np.linalg.norm(np.asarray(got, dtype=np.float64).ravel()))
    r = float(np.linalg.norm(np.asarray(ref, dtype=np.float64).ravel()))
    if r == 0.0:
        return 1.0 if g == 0.0 else math.inf
    return g / r


def report(rows: list[Comparison]) -> str:
    """A fixed-width table, worst cosine per (graph, tensor) over all trials."""
    worst: dict[tuple[str, str], Comparison] = {}
    for row in rows:
        key = (row.graph, row.tensor)
        if key not in worst or row.rank() < worst[key].rank():
            worst[key] = row
    lines = [f"{'graph':<14}{'tensor':<12}{'cosine':>12}{'max |err|':>12}{'gate':>10}  result"]
    for row in worst.values():
        verdict = "ok" if row.passed else "FAIL"
        lines.append(
            f"{row.graph:<14}{row.tensor:<12}{row.cosine:>12.6f}{row.max_abs:>12.3e}{row.gate:>10.4f}  {verdict}"
        )
    return "\n".join(lines)


def token_id_limit(tokenizer_file: Path) -> int | None:
    """1 + the largest id a `tokenizer.json` can produce (model vocabulary and added tokens); None if unreadable."""
    try:
        tok = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))
        vocab = (tok.get("model") or {}).get("vocab") or {}
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
        ids += [a.get("id", 0) for a in tok.get("added_tokens") or []]
        return max((int(i) for i in ids), default=-1) + 1
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def vocab_size(artifacts: Path, manifest: dict[str, Any]) -> int:
    """Token ids the artifact's tokenizer can produce (1 + its largest id), at most the embedding rows the
    manifest records (dims.vocab_size); 1000 when it records neither."""
    limit = token_id_limit(artifacts / manifest.get("tokenizer", {}).get("file", "tokenizer.json"))
    rows = manifest.get("dims", {}).get("vocab_size")
    if limit is None or limit < 1:
        limit = 1000
    return min(limit, rows) if isinstance(rows, int) and rows > 0 else limit


def random_inputs(manifest: dict[str, Any], rng: np.random.Generator, vocab: int = 1000) -> dict[str, np.ndarray]:
    """Fresh prefix inputs with the manifest's shapes: images in [0,1], a left-aligned language mask,
    token ids below `vocab` (pass `vocab_size(...)`: a tiny model's embedding table is small)."""
    specs = {s["name"]: s for s in manifest["graphs"]["prefix"]["inputs"]}
    images = rng.random(specs["images"]["shape"], dtype=np.float32)
    lang_shape = specs["lang_tokens"]["shape"]
    length = lang_shape[-1]
    real = int(rng.integers(1, length + 1))
    tokens = np.zeros(lang_shape, dtype=np.int64)
    tokens[..., :real] = rng.integers(1, max(vocab, 2), size=real)
    mask = np.zeros(lang_shape, dtype=np.bool_)
    mask[..., :real] = True
    state = rng.standard_normal(specs["state"]["shape"]).astype(np.float32)
    return {"images": images, "lang_tokens": tokens, "lang_mask": mask, "state": state}


def euler_chunk(num_steps: int, kv: dict[str, np.ndarray], noise: np.ndarray,
                run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> np.ndarray:
    """The chunk from `noise` after the main expert's Euler loop (t = 1 → 0); `run(feeds) -> outputs` is one
    main-expert call (onnxruntime session, instrumented session, ...), `kv` the prefix K/V/pad it reads."""
    x = noise
    for i in range(num_steps):
        v = run({"x_t": x, "t": np.array([1.0 - i / num_steps], np.float32), **kv})["v_t"]
        x = (x - np.float32(1.0 / num_steps) * v).astype(np.float32)
    return x


def ort_runner(path: Path) -> Runner:
    """One graph as `feeds -> {output name: array}` on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


@dataclass(frozen=True)
class Draw:
    """One validation observation and the random expert inputs that go with it."""

    feeds: dict[str, np.ndarray]  # prefix inputs
    x: np.ndarray  # main expert x_t, in isolation
    t: np.ndarray
    plan: np.ndarray  # delta expert input, in isolation
    noise: np.ndarray  # whole-chunk starting noise
    plan_valid: np.ndarray  # plan encoder: a remainder of the plan (rows past it are padding, must stay invisible)


def validation_draws(manifest: dict[str, Any], trials: int, seed: int, vocab: int) -> list[Draw]:
    """`trials` fresh validation draws from `seed`: the same inputs for every derivation checked with that seed."""
    dims = manifest["dims"]
    shape = (1, int(dims["chunk_size"]), int(dims["max_action_dim"]))
    rng = np.random.default_rng(seed)
    return [Draw(random_inputs(manifest, rng, vocab), rng.standard_normal(shape).astype(np.float32),
                 np.array([rng.uniform(0.05, 1.0)], np.float32), rng.standard_normal(shape).astype(np.float32),
                 rng.standard_normal(shape).astype(np.float32),
                 np.arange(shape[1])[None] < rng.integers(1, shape[1] + 1)) for _ in range(trials)]


def embedding_shift(got: np.ndarray, want: np.ndarray) -> float:
    """The gates' view of a derivation: cosine distance of the two embeddings of CLS tokens; a degenerate
    (zero / NaN) derived embedding is the largest shift, a failing row rather than a crash."""
    try:
        return cosine_distance(embed(got), embed(want))
    except ValueError:
        return MAX_COSINE_DISTANCE


def embedding_bound(manifest: dict[str, Any], row: str) -> tuple[float, str] | None:
    """(allowed shift, why) for gate embedding `row` ("obs_emb" / "act_emb"): `EMBEDDING_SHARE` of the smallest
    calibrated threshold among the gates reading it; None when the manifest calibrated none of them."""
    gate = manifest.get("gate") or {}
    thresholds = {}
    for name in GATE_EMBEDDINGS[row][3]:
        entry = gate.get(name)
        value = entry.get("default_threshold") if isinstance(entry, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            thresholds[name] = float(value)
    if not thresholds:
        return None
    name = min(thresholds, key=lambda k: thresholds[k])
    return EMBEDDING_SHARE * thresholds[name], f"{EMBEDDING_SHARE:g} x the {name} threshold {thresholds[name]:.4g}"


def embedding_row(manifest: dict[str, Any], row: str, got: np.ndarray, want: np.ndarray) -> Comparison | None:
    """The check both derivations run: how far `got` (derived) moved gate embedding `row` from `want` (fp32),
    as a Comparison (cosine = 1 - shift, max_abs = shift, gate = 1 - bound); None when no gate bounds it."""
    bound = embedding_bound(manifest, row)
    if bound is None:
        return None
    shift = embedding_shift(got, want)
    return Comparison(GATE_EMBEDDINGS[row][0], row, 1.0 - shift, shift, 1.0 - bound[0])


def embedding_rows(want: dict[str, Runner], got: dict[str, Runner], manifest: dict[str, Any],
                   draws: list[Draw]) -> list[Comparison]:
    """`embedding_row` for obs-CLS (prefix) and the plan encoder's act-CLS on every draw (fp32 `want` vs derived
    `got` runners, keyed by graph): for a derivation that has no cosine gate of its own (int8)."""
    rows: list[Comparison] = []
    for d in draws:
        plan_feeds = {"plan": d.plan, "plan_valid": d.plan_valid}
        for row, (graph, output, _, _) in GATE_EMBEDDINGS.items():
            feeds = d.feeds if graph == "prefix" else plan_feeds
            checked = embedding_row(manifest, row, got[graph](feeds)[output], want[graph](feeds)[output])
            if checked is not None:
                rows.append(checked)
    return rows


def embedding_refusal(rows: list[Comparison], manifest: dict[str, Any]) -> str | None:
    """One line naming the graph and the worst gate-embedding shift over its bound, or None when all hold."""
    failed = [r for r in rows if r.tensor in GATE_EMBEDDINGS and not r.passed]
    if not failed:
        return None
    worst = min(failed, key=lambda r: r.rank())
    graph, _, label, _ = GATE_EMBEDDINGS[worst.tensor]
    bound, why = embedding_bound(manifest, worst.tensor) or (0.0, "?")
    return (f"{graph} {label} embedding moved {worst.max_abs:.4g} (cosine distance) > allowed {bound:.4g} "
            f"({why}): the fp32 gate thresholds would no longer hold; nothing written")


def worst_rows(rows: list[Comparison]) -> dict[str, dict[str, float]]:
    """The manifest's `validation.worst`: per `graph.tensor`, the worst row's cosine, max |err| and gate."""
    worst: dict[str, Comparison] = {}
    for r in rows:
        key = f"{r.graph}.{r.tensor}"
        if key not in worst or r.rank() < worst[key].rank():
            worst[key] = r
    return {k: {"cosine": round(r.cosine, 7), "max_abs": float(f"{r.max_abs:.4g}"), "gate": r.gate}
            for k, r in worst.items()}
