"""Builds a small but contract-valid artifact folder with numpy + onnx.helper + tokenizers (no torch).

Four tiny ONNX graphs with exactly the contract's I/O names, shapes and dtypes, a WordLevel
tokenizer.json and a manifest.json with correct hashes. The math is arbitrary but deterministic and
smooth, and built so the runtime's behaviour is checkable:
- prefix: features (random image projection, state, masked tokens) → tanh → K/V; a per-observation
  target plan a* = 0.5·tanh(pool(K, V) @ Wa); obs_cls = tanh(flat(a*) @ Wc) per token;
- main_expert: v_t = (x_t − a*)·(1 + 0.1 t) — the Euler result depends on the noise and on a*;
- delta_expert: delta = 0.25·(a* − actions); act_cls = tanh(flat(actions) @ Wc), so the consistency
  distance is ~0 for a plan equal to a* and grows as the observation's target moves away;
- plan_encoder: act_cls = tanh(flat(plan · plan_valid) @ Wc) — the plan alone, no K/V input.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.artifact_identity import stamp_identity

OPSET = 18
VOCAB = ["[PAD]", "[UNK]", "<s>", "reach", "the", "red", "green", "blue", "target", "\n"]
CAMERA_KEY = "observation.images.top"
STATE_KEY = "observation.state"


class _G:
    """Minimal graph assembler: collects nodes/initializers with unique names."""

    def __init__(self, rng: np.random.Generator):
        self.nodes, self.inits, self.rng, self._n = [], [], rng, 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name("n"), **attrs))
        return out

    def weight(self, shape: tuple[int, ...], scale: float) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")


def _shape(g: _G, dims: list[int]) -> str:
    return g.const(np.asarray(dims, dtype=np.int64), "shape")


def _target_plan(g: _G, k: str, v: str, pad: str, d: dict, wa: str) -> str:
    """a* [1,T,A] from K/V (masked by prefix_pad): shared by all three graphs with the same weights."""
    padf = g.op("Reshape", [g.op("Cast", [pad], to=TensorProto.FLOAT), _shape(g, [1, 1, d["prefix_len"], 1, 1])])
    axes = g.const(np.asarray([0, 1, 2, 3], dtype=np.int64), "axes")
    pk = g.op("ReduceMean", [g.op("Mul", [k, padf]), axes], keepdims=0)
    pv = g.op("ReduceMean", [g.op("Mul", [v, padf]), axes], keepdims=0)
    pooled = g.op("Reshape", [g.op("Concat", [pk, pv], axis=0), _shape(g, [1, 2 * d["head_dim"]])])
    a = g.op("Tanh", [g.op("MatMul", [pooled, wa])])
    a = g.op("Mul", [a, g.const(np.float32(0.5))])
    return g.op("Reshape", [a, _shape(g, [1, d["chunk_size"], d["max_action_dim"]])])


def _cls_tokens(g: _G, plan: str, d: dict, wc: str, bc: str, n_tokens: int) -> str:
    """tanh(flat(plan) @ Wc + bc) repeated over n_tokens with fixed per-token scales → [1,n,E]."""
    flat = g.op("Reshape", [plan, _shape(g, [1, d["chunk_size"] * d["max_action_dim"]])])
    h = g.op("Tanh", [g.op("Add", [g.op("MatMul", [flat, wc]), bc])])
    h = g.op("Reshape", [h, _shape(g, [1, 1, d["cls_dim"]])])
    scales = np.linspace(1.0, 0.8, n_tokens, dtype=np.float32).reshape(1, n_tokens, 1)
    return g.op("Mul", [h, g.const(scales)])


def _io(name: str, dtype: int, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(g: _G, name: str, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fake_artifacts")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _graphs(d: dict, n_cameras: int, img: int, seed: int) -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(seed)
    P, L, S, T, A = d["prefix_len"], d["lang_len"], d["max_state_dim"], d["chunk_size"], d["max_action_dim"]
    kv_shape = [d["num_layers"], 1, P, d["kv_heads"], d["head_dim"]]
    kv_size = int(np.prod(kv_shape))
    n_img = n_cameras * 3 * img * img
    F = 6 + S + L
    # weights shared by graphs (same seed → same arrays in each graph)
    w_img = (rng.standard_normal((n_img, 6)) * (8.0 / np.sqrt(n_img))).astype(np.float32)
    w_k = (rng.standard_normal((F, kv_size)) * 0.7).astype(np.float32)
    w_v = (rng.standard_normal((F, kv_size)) * 0.7).astype(np.float32)
    w_a = (rng.standard_normal((2 * d["head_dim"], T * A)) * 6.0).astype(np.float32)
    w_c = (rng.standard_normal((T * A, d["cls_dim"])) * 0.8).astype(np.float32)
    b_c = (rng.standard_normal(d["cls_dim"]) * 0.1).astype(np.float32)
    kv_io = [_io("prefix_k", TensorProto.FLOAT, kv_shape), _io("prefix_v", TensorProto.FLOAT, kv_shape),
             _io("prefix_pad", TensorProto.BOOL, [1, P])]

    # ---- prefix
    g = _G(rng)
    im = g.op("Reshape", ["images", _shape(g, [1, n_img])])
    f_img = g.op("MatMul", [im, g.const(w_img)])
    tok = g.op("Mul", [g.op("Cast", ["lang_tokens"], to=TensorProto.FLOAT), g.op("Cast", ["lang_mask"], to=TensorProto.FLOAT)])
    tok = g.op("Mul", [tok, g.const(np.float32(1.0 / len(VOCAB)))])
    f = g.op("Concat", [f_img, "state", tok], axis=1)
    g.op("Reshape", [g.op("Tanh", [g.op("MatMul", [f, g.const(w_k)])]), _shape(g, kv_shape)], out="prefix_k")
    g.op("Reshape", [g.op("Tanh", [g.op("MatMul", [f, g.const(w_v)])]), _shape(g, kv_shape)], out="prefix_v")
    head = g.const(np.ones((1, P - L - 1), dtype=np.bool_), "pad_head")
    tail = g.const(np.ones((1, 1), dtype=np.bool_), "pad_tail")
    g.op("Concat", [head, "lang_mask", tail], out="prefix_pad", axis=1)
    a_star = _target_plan(g, "prefix_k", "prefix_v", "prefix_pad", d, g.const(w_a))
    g.op("Identity", [_cls_tokens(g, a_star, d, g.const(w_c), g.const(b_c), d["num_cls_prefix"])], out="obs_cls")
    prefix = _model(g, "prefix", [
        _io("images", TensorProto.FLOAT, [1, n_cameras, 3, img, img]), _io("lang_tokens", TensorProto.INT64, [1, L]),
        _io("lang_mask", TensorProto.BOOL, [1, L]), _io("state", TensorProto.FLOAT, [1, S])],
        kv_io + [_io("obs_cls", TensorProto.FLOAT, [1, d["num_cls_prefix"], d["cls_dim"]])])

    # ---- main expert
    g = _G(rng)
    a_star = _target_plan(g, "prefix_k", "prefix_v", "prefix_pad", d, g.const(w_a))
    gain = g.op("Add", [g.op("Mul", ["t", g.const(np.float32(0.1))]), g.const(np.float32(1.0))])
    g.op("Mul", [g.op("Sub", ["x_t", a_star]), gain], out="v_t")
    main = _model(g, "main_expert", [_io("x_t", TensorProto.FLOAT, [1, T, A]), _io("t", TensorProto.FLOAT, [1])] + kv_io,
                  [_io("v_t", TensorProto.FLOAT, [1, T, A])])

    # ---- delta expert
    g = _G(rng)
    a_star = _target_plan(g, "prefix_k", "prefix_v", "prefix_pad", d, g.const(w_a))
    g.op("Mul", [g.op("Sub", [a_star, "actions"]), g.const(np.float32(0.25))], out="delta")
    g.op("Identity", [_cls_tokens(g, "actions", d, g.const(w_c), g.const(b_c), d["num_cls_suffix"])], out="act_cls")
    delta = _model(g, "delta_expert", [_io("actions", TensorProto.FLOAT, [1, T, A])] + kv_io,
                   [_io("delta", TensorProto.FLOAT, [1, T, A]), _io("act_cls", TensorProto.FLOAT, [1, d["num_cls_suffix"], d["cls_dim"]])])

    # ---- plan encoder (no observation input)
    g = _G(rng)
    valid = g.op("Reshape", [g.op("Cast", ["plan_valid"], to=TensorProto.FLOAT), _shape(g, [1, T, 1])])
    masked = g.op("Mul", ["plan", valid])
    g.op("Identity", [_cls_tokens(g, masked, d, g.const(w_c), g.const(b_c), d["num_cls_suffix"])], out="act_cls")
    plan_encoder = _model(g, "plan_encoder", [_io("plan", TensorProto.FLOAT, [1, T, A]),
                                              _io("plan_valid", TensorProto.BOOL, [1, T])],
                          [_io("act_cls", TensorProto.FLOAT, [1, d["num_cls_suffix"], d["cls_dim"]])])
    return {"prefix": prefix, "main_expert": main, "delta_expert": delta, "plan_encoder": plan_encoder}


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "isolated")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return tok.to_str()


def _io_specs(model: onnx.ModelProto) -> tuple[list, list]:
    names = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64", TensorProto.BOOL: "bool"}

    def spec(vi):
        t = vi.type.tensor_type
        return {"name": vi.name, "shape": [x.dim_value for x in t.shape.dim], "dtype": names[t.elem_type]}

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def _sha(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def fake_manifest_dims(chunk_size: int = 6, n_action_steps: int | None = None, num_steps: int = 4) -> dict:
    L, n_cls, tokens_per_image = 8, 2, 4
    return {"chunk_size": chunk_size, "n_action_steps": n_action_steps or chunk_size, "num_steps": num_steps,
            "action_dim": 2, "state_dim": 2, "max_action_dim": 4, "max_state_dim": 4, "lang_len": L,
            "prefix_len": n_cls + tokens_per_image + L + 1, "num_layers": 2, "kv_heads": 1, "head_dim": 4,
            "num_cls_prefix": n_cls, "num_cls_suffix": 2, "cls_dim": 8, "delta_time": 0.5}


# int8 moves the toy prefix's obs-CLS by up to 0.0076 (cosine distance, 16 draws, seed 0): over the 0.005 a
# drift threshold of 0.05 allows (a tenth), within the 0.01 this one allows (the consistency threshold is 0.1)
INT8_DRIFT_THRESHOLD = 0.1


def build_fake_artifacts(out_dir: str | Path, *, seed: int = 0, chunk_size: int = 6, n_action_steps: int | None = None,
                         num_steps: int = 4, image_size: int = 32, camera_size: tuple[int, int] = (64, 64),
                         action_bound: float = 0.08, edit_manifest: Callable[[dict], None] | None = None,
                         signing_key=None, act_cls_wiring: str = "seed", drift_threshold: float = 0.05) -> Path:
    """Write the folder and return its path. `edit_manifest(m)` may alter the manifest before it is hashed;
    the identity digest is stamped last (signed when `signing_key`, an Ed25519 private key, is given).
    `drift_threshold`: the manifest's calibrated drift threshold (`INT8_DRIFT_THRESHOLD` for folders that are
    quantized: the toy graphs' steep weights move obs-CLS too far under int8 for the default's bound)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = fake_manifest_dims(chunk_size, n_action_steps, num_steps)
    models = _graphs(d, 1, image_size, seed)
    graphs = {}
    for name, model in models.items():
        onnx.save(model, str(out / f"{name}.onnx"))
        ins, outs = _io_specs(model)
        graphs[name] = {"file": f"{name}.onnx", "data_file": None, "inputs": ins, "outputs": outs}
    (out / "tokenizer.json").write_text(_tokenizer_json())
    manifest = {
        "format_version": 3,
        "producer": "smolvla-cls-edge tests/fake_artifacts",
        "created_utc": "2026-01-01T00:00:00Z",
        "versions": {"onnx": onnx.__version__, "opset": OPSET},
        "model": {"policy_type": "fake", "preset": "fake", "config": {}},
        "dims": d,
        "cameras": [{"key": CAMERA_KEY, "height": camera_size[0], "width": camera_size[1], "channels": 3}],
        "state_key": STATE_KEY,
        "image_preprocess": {"height": image_size, "width": image_size, "resize": "keep_aspect_pad",
                             "pad_side": "left_top", "pad_value": 0.0, "input_range": [0.0, 1.0],
                             "input_dtype": "float32 CHW or uint8 HWC"},
        "normalization": {
            STATE_KEY: {"mode": "mean_std", "mean": [0.5, 0.5], "std": [0.29, 0.29], "eps": 1e-8},
            "action": {"mode": "mean_std", "mean": [0.0, 0.0], "std": [0.03, 0.03], "eps": 1e-8},
        },
        "action_bounds": {"low": [-action_bound] * 2, "high": [action_bound] * 2, "margin": 0.1},
        "state_bounds": {"low": [0.0, 0.0], "high": [1.0, 1.0]},
        "tokenizer": {"file": "tokenizer.json", "max_length": d["lang_len"], "pad_token_id": 0,
                      "padding_side": "right", "append_newline": True, "truncation": False},
        "delta_input": "shift_remaining_repeat_last",
        "graphs": graphs,
        "act_cls": {"wiring": act_cls_wiring, "plan_input": "remaining_rows_front_valid_mask"},
        "gate": {"metric": "cosine_distance",
                 "drift": {"stats": {"p50": 0.01, "p90": 0.05, "p95": 0.08, "p99": 0.15}, "default_threshold": drift_threshold},
                 "consistency": {"stats": {"p50": 0.02, "p90": 0.1, "p95": 0.15, "p99": 0.3}, "default_threshold": 0.1}},
    }
    if edit_manifest is not None:
        edit_manifest(manifest)
    manifest.setdefault("files", {})
    for fname in ["tokenizer.json"] + [g["file"] for g in graphs.values()]:
        manifest["files"].setdefault(fname, _sha(out / fname))
    stamp_identity(manifest, signing_key)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def load_manifest_dict(artifacts: str | Path) -> dict:
    return copy.deepcopy(json.loads((Path(artifacts) / "manifest.json").read_text()))


def write_manifest_dict(artifacts: str | Path, manifest: dict, restamp: bool = True, signing_key=None) -> None:
    """Write an edited manifest; `restamp` re-computes its digest as export would (False: a tampered manifest)."""
    if restamp:
        stamp_identity(manifest, signing_key)
    (Path(artifacts) / "manifest.json").write_text(json.dumps(manifest, indent=2))


_CACHE: dict[tuple, Path] = {}


def cached_fake_artifacts(**kwargs) -> Path:
    """Build once per process per option set (tests that tamper must copy the folder first)."""
    import atexit
    import shutil
    import tempfile

    key = tuple(sorted(kwargs.items()))
    if key not in _CACHE or not (_CACHE[key] / "manifest.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix="fake_artifacts_"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _CACHE[key] = build_fake_artifacts(tmp, **kwargs)
    return _CACHE[key]


def make_observation(rng: np.random.Generator | int = 0, task: str = "reach the red target",
                     size: tuple[int, int] = (64, 64)) -> dict:
    """A valid observation for the fake artifacts (uint8 HWC image, state inside state_bounds)."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    return {CAMERA_KEY: rng.integers(0, 256, size=(*size, 3), dtype=np.uint8),
            STATE_KEY: rng.uniform(0.0, 1.0, size=2).astype(np.float32),
            "task": task}


def externalize_weights(folder: str | Path, graph: str, scale: float = 1.0) -> Path:
    """Move `graph`'s float32 initializers (weights and biases; integer shape constants stay inline) into
    `<graph>.onnx.data`, as export does for graphs over 256 MB, and re-record the manifest; returns the data file.
    The weights are multiplied by `scale` first: two folders with different scales hold the same `<graph>.onnx`
    bytes but other weights (another checkpoint of the same architecture)."""
    from onnx.external_data_helper import set_external_data

    folder = Path(folder)
    path, data = folder / f"{graph}.onnx", folder / f"{graph}.onnx.data"
    model = onnx.load(str(path))
    blob = bytearray()
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.dtype != np.float32:
            continue
        raw = (arr * np.float32(scale)).astype(np.float32).tobytes()
        t.CopyFrom(numpy_helper.from_array(arr, t.name))  # the same proto layout for every scale
        set_external_data(t, location=data.name, offset=len(blob), length=len(raw))
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        blob += raw
    data.write_bytes(bytes(blob))
    onnx.save_model(model, str(path))
    raw_manifest = load_manifest_dict(folder)
    raw_manifest["graphs"][graph]["data_file"] = data.name
    raw_manifest["files"][path.name], raw_manifest["files"][data.name] = _sha(path), _sha(data)
    write_manifest_dict(folder, raw_manifest)
    return data


_ROBOT_CACHE: dict[tuple, Path] = {}


def robot_fake_artifacts(action_names, state_names=("s1", "s2"), *, chunk_size: int, n_action_steps: int,
                         fps: int = 30) -> Path:
    """A cached fake folder whose manifest has a `robot` section with these motor names (one 64² camera)."""
    key = (tuple(action_names), tuple(state_names), chunk_size, n_action_steps, fps)
    if key not in _ROBOT_CACHE or not (_ROBOT_CACHE[key] / "manifest.json").is_file():
        section = {"fps": fps, "action_names": list(action_names), "state_names": list(state_names),
                   "cameras": {"observation.images.top": {"height": 64, "width": 64, "channels": 3}}}
        _ROBOT_CACHE[key] = cached_fake_artifacts(edit_manifest=lambda m: m.__setitem__("robot", section),
                                                  chunk_size=chunk_size, n_action_steps=n_action_steps)
    return _ROBOT_CACHE[key]
