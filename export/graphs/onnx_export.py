"""`make export`: checkpoint (or offline preset) -> artifact folder with four ONNX graphs (prefix, main_expert,
delta_expert, plan_encoder), the tokenizer and manifest.json (docs/10-artifact-contract.md). The folder is
written under a temporary name and renamed into place only when complete, so a failed export never leaves a
folder that looks valid; `--out` may only name a new or empty folder or an earlier artifact folder, since the
rename replaces what is there. The manifest carries the folder's identity digest (signed with `--sign-key`,
see export/signing.py), printed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from export.graphs.checkpoint_loading import ExportInputError, LoadedPolicy, load_checkpoint, load_preset
from export.graphs.export_checks import check_dataset_stats, check_vocab
from export.graphs.gate_calibration import (
    calibrate_on_simtask,
    capped_horizon,
    check_horizon,
    simtask_mismatch,
    uncalibrated,
    with_default_gate,
)
from export.graphs.graph_wrappers import (
    DELTA_INPUTS,
    DELTA_OUTPUTS,
    MAIN_INPUTS,
    MAIN_OUTPUTS,
    PLAN_INPUTS,
    PLAN_OUTPUTS,
    PREFIX_INPUTS,
    PREFIX_OUTPUTS,
    DeltaExpertGraph,
    MainExpertGraph,
    PlanEncoderGraph,
    PrefixGraph,
    example_inputs,
)
from export.graphs.normalization import Normalizer, normalization_section
from export.graphs.onnx_checks import graph_problems
from export.graphs.robot_section import dataset_root_from_checkpoint, robot_section
from export.graphs.tensorrt_rewrites import make_tensorrt_portable
from export.signing import SigningError, load_private_key, stamp_identity
from export.trt.parser_compat import check_model, rules
from runtime.atomic_folder import AtomicFolderError, atomic_folder, destination_problem
from runtime.fingerprint import file_records
from runtime.manifest_schema import FORMAT_VERSION
from runtime.strict_json import strict_dumps
from smolvla_cls.instruction_length import warn_overlong

OPSET = 18
EXTERNAL_DATA_BYTES = 256 << 20  # graphs with more weight bytes than this keep weights in <name>.onnx.data
BOUNDS_MARGIN = 0.1  # action bounds = dataset [min, max] widened by 10 % of the span on each side

GRAPHS = {
    "prefix": (PrefixGraph, PREFIX_INPUTS, PREFIX_OUTPUTS),
    "main_expert": (MainExpertGraph, MAIN_INPUTS, MAIN_OUTPUTS),
    "delta_expert": (DeltaExpertGraph, DELTA_INPUTS, DELTA_OUTPUTS),
    "plan_encoder": (PlanEncoderGraph, PLAN_INPUTS, PLAN_OUTPUTS),
}
_DTYPE_NAMES = {torch.float32: "float32", torch.int64: "int64", torch.bool: "bool", torch.int32: "int32"}


def _spec(names, tensors) -> list[dict]:
    return [{"name": n, "shape": list(t.shape), "dtype": _DTYPE_NAMES[t.dtype]} for n, t in zip(names, tensors, strict=True)]


def export_graph(module: torch.nn.Module, inputs: tuple, names_in, names_out, path: Path) -> dict:
    """Dynamo-export one wrapper (static shapes), check it for TensorRT, return its manifest entry."""
    with torch.no_grad():
        outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    program = torch.onnx.export(module, inputs, dynamo=True, input_names=list(names_in),
                                output_names=list(names_out), opset_version=OPSET, verbose=False)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=external)
    model = onnx.load(str(path), load_external_data=False)
    # Exact rewrites so that every supported TensorRT parses the graph (ScatterND's explicit reduction, integer
    # CumSum: rejected before 10.9 / 10.8); weights stay in the external data file, only the proto is rewritten.
    make_tensorrt_portable(model, base_dir=str(path.parent))
    onnx.save_model(model, str(path))
    problems = graph_problems(model)
    # ... and every TensorRT we support parses it (ops, attributes, dtypes per version: export.trt.parser_compat).
    problems += [r.line() for r in check_model(model, path.stem, list(rules()["checked_versions"]))]
    if problems:
        raise RuntimeError(f"{path.name} is not TensorRT-ready: " + "; ".join(problems[:5]))
    data_file = f"{path.name}.data" if external and (path.parent / f"{path.name}.data").exists() else None
    return {"file": path.name, "data_file": data_file, "inputs": _spec(names_in, inputs),
            "outputs": _spec(names_out, outputs), "nodes": len(model.graph.node)}


def simtask_gate_calibration(loaded: LoadedPolicy, tokenize, episodes: int, horizon: int, plans: str = "policy",
                             progress: bool = False) -> dict:
    """The export's gate calibration of `loaded` (gate_calibration.calibrate_on_simtask) with the checkpoint's
    normalisation and the manifest's action bounds — one place, so scripts measure what the manifest gets."""
    norm = Normalizer.of(loaded)
    bounds = _bounds(loaded.stats, "action", BOUNDS_MARGIN)
    return calibrate_on_simtask(loaded.policy.model.eval(), norm.state, norm.action, tokenize, episodes,
                                progress=progress, horizon=horizon, plans=plans, unnormalize_action=norm.action_raw,
                                action_bounds=(np.asarray(bounds["low"]), np.asarray(bounds["high"])))


def embedding_rows(policy) -> int:
    """Rows of the VLM's input embedding: every token id fed to the prefix graph must be below it."""
    return int(policy.model.vlm_with_expert.vlm.get_input_embeddings().weight.shape[0])


def _tokenizer_fn(vlm_dir: Path, max_length: int):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(vlm_dir))

    def tokenize(text: str):
        enc = tok(text if text.endswith("\n") else text + "\n", padding="max_length", max_length=max_length,
                  truncation=False, return_tensors="pt", padding_side="right")
        return enc["input_ids"].long(), enc["attention_mask"].bool()

    return tok, tokenize


def _bounds(stats: dict, key: str, margin: float) -> dict:
    lo, hi = np.asarray(stats[key]["min"], dtype=np.float64), np.asarray(stats[key]["max"], dtype=np.float64)
    span = np.maximum(hi - lo, 1e-6)
    return {"low": (lo - margin * span).tolist(), "high": (hi + margin * span).tolist(), "margin": margin}


def _check_stop_action(stop: list[float], bounds: dict, given: bool) -> None:
    """The runtime refuses a stop action outside action_bounds: refuse it here, before the export runs."""
    bad = [i for i, (v, lo, hi) in enumerate(zip(stop, bounds["low"], bounds["high"], strict=True))
           if not (np.isfinite(v) and lo <= v <= hi)]
    if bad:
        i = bad[0]
        what = "--stop-action" if given else "the default stop action (zeros; for delta-action datasets)"
        raise ExportInputError(f"{what}: value {stop[i]} of action dim {i} lies outside action_bounds "
                               f"[{bounds['low'][i]:.4g}, {bounds['high'][i]:.4g}]; pass --stop-action with the "
                               "robot's rest command (absolute-position robots need their rest pose)")


def build_manifest(loaded: LoadedPolicy, graphs: dict, gate: dict, tokenizer, files: dict, seconds: float,
                   stop_action: list[float] | None = None, robot: dict | None = None) -> dict:
    policy = loaded.policy
    cfg, model = policy.config, policy.model
    vlm_text = model.vlm_with_expert.config.text_config
    state_key = "observation.state"
    prefix_k = graphs["prefix"]["outputs"][0]["shape"]
    import lerobot
    import onnxruntime

    cams = [{"key": k, "height": int(f.shape[1]), "width": int(f.shape[2]), "channels": int(f.shape[0])}
            for k, f in cfg.image_features.items()]
    h, w = cfg.resize_imgs_with_padding
    manifest = {
        "format_version": FORMAT_VERSION,
        "producer": "smolvla-cls-edge export.graphs.onnx_export",
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"torch": torch.__version__, "lerobot": lerobot.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "opset": OPSET},
        "model": {"policy_type": "smolvla_cls", "preset": loaded.preset, "source": loaded.source,
                  "config": json.loads(json.dumps(cfg.__dict__, default=str))},
        "dims": {"chunk_size": cfg.chunk_size, "n_action_steps": cfg.n_action_steps, "num_steps": cfg.num_steps,
                 "action_dim": cfg.action_feature.shape[0], "state_dim": cfg.robot_state_feature.shape[0],
                 "max_action_dim": cfg.max_action_dim, "max_state_dim": cfg.max_state_dim,
                 "lang_len": cfg.tokenizer_max_length, "prefix_len": prefix_k[2], "num_layers": prefix_k[0],
                 "kv_heads": prefix_k[3], "head_dim": prefix_k[4], "num_cls_prefix": model.num_prefix_cls,
                 "num_cls_suffix": model.num_suffix_cls, "cls_dim": model.vlm_with_expert.expert_hidden_size,
                 "delta_time": cfg.delta_time, "vlm_hidden": vlm_text.hidden_size,
                 "vocab_size": embedding_rows(policy)},  # token ids the prefix graph's embedding has rows for
        "cameras": cams,
        "state_key": state_key,
        "image_preprocess": {"height": h, "width": w, "resize": "keep_aspect_pad", "pad_side": "left_top",
                             "pad_value": 0.0, "input_range": [0.0, 1.0], "interpolation": "bilinear",
                             "input_dtype": "float32 CHW or uint8 HWC", "graph_applies": "x * 2 - 1"},
        # each feature's mode as the checkpoint's normaliser applied it (mean_std | min_max | identity), checked
        "normalization": normalization_section(loaded, state_key),
        "action_bounds": _bounds(loaded.stats, "action", BOUNDS_MARGIN),
        "state_bounds": _bounds(loaded.stats, state_key, 0.0),
        "tokenizer": {"file": "tokenizer.json", "max_length": cfg.tokenizer_max_length,
                      "pad_token_id": int(tokenizer.pad_token_id), "padding_side": "right",
                      "append_newline": True, "truncation": False},
        "delta_input": "shift_remaining_repeat_last",
        # What the runtime emits when it must stop (fallback="stop", or before any safe action exists).
        # Zero displacement suits delta-action datasets like the default task; robots commanded in absolute
        # positions must pass their own rest pose (`--stop-action`).
        "safety": {"stop_action": stop_action if stop_action is not None else [0.0] * cfg.action_feature.shape[0]},
        "graphs": graphs,
        # which act-CLS the consistency gate compares with the current obs-CLS (docs/10-artifact-contract.md)
        "act_cls": {"wiring": cfg.act_cls_wiring, "plan_input": "remaining_rows_front_valid_mask"},
        "gate": gate,
        "export_seconds": round(seconds, 2),
        "files": files,
    }
    if robot is not None:  # optional: motor names, cameras, fps from the LeRobotDataset (docs/07-robot.md)
        manifest["robot"] = robot
    return manifest


def check_out(out: Path, checkpoint: Path | None) -> None:
    """Refuse an `--out` the export's atomic swap would wrongly replace: it must be a new or empty folder or an
    earlier artifact folder (a manifest.json with a graphs section), and apart from the checkpoint it reads."""
    keep_apart = [("--checkpoint", Path(checkpoint))] if checkpoint is not None else []
    problem = destination_problem(
        Path(out), "--out", lambda raw: isinstance(raw.get("graphs"), dict),
        "exists and is not an artifact folder (no manifest.json with graphs); choose a new or empty folder for "
        "--out (only an earlier export is replaced, and all its contents go)", keep_apart=keep_apart)
    if problem:
        raise ExportInputError(problem)


def check_calib_episodes(episodes: int) -> None:
    """At least one simulated episode: with none the gate calibration is empty (no stats, fallback thresholds)."""
    if episodes < 1:
        raise ExportInputError(f"--calib-episodes must be at least 1, got {episodes}; to skip the gate "
                               "calibration pass --no-calibration instead")


def export_artifacts(loaded: LoadedPolicy, out: Path, calibrate: bool = True, calib_episodes: int = 24,
                     progress: bool = True, stop_action: list[float] | None = None, signing_key: object = None,
                     dataset_root: Path | None = None, gate_horizon: int | None = None,
                     default_gate: str = "auto", default_cap: str = "auto") -> dict:
    """Write the artifact folder atomically; returns the manifest (identity signed when `signing_key` is given).
    `gate_horizon`: calibrate the gate on pairs < that many ticks apart (default: the default gate's plan-age
    cap, else n_action_steps; `gate_calibration.capped_horizon`).
    `default_gate`: the manifest's recommended gate (`gate.default`; "auto" = by calibration AUROC), capped by
    `default_cap` (auto | K | 0; see `with_default_gate`)."""
    from tqdm import tqdm

    started = time.time()
    out = Path(out)
    from_checkpoint = not loaded.source.startswith("preset:")  # a tiny-VLM checkpoint has a preset too
    check_out(out, Path(loaded.source) if from_checkpoint and Path(loaded.source).is_dir() else None)
    if calibrate:
        check_calib_episodes(calib_episodes)
    action_dim = loaded.policy.config.action_feature.shape[0]
    normalization_section(loaded)  # modes the runtime applies, finite usable stats: refused before anything else
    check_vocab(Path(loaded.policy.config.vlm_model_name) / "tokenizer.json", embedding_rows(loaded.policy))
    root = dataset_root or (dataset_root_from_checkpoint(Path(loaded.source)) if from_checkpoint else None)
    # the calibration drives the simulated reach task: only a tiny policy with its inputs, trained on its recordings
    mismatch = simtask_mismatch(loaded.policy.config, root) if calibrate and loaded.preset == "tiny" else None
    if mismatch:
        print(f"[export] gate calibration skipped: {mismatch}; the manifest's thresholds are placeholders "
              "(0.05): give the runtime a gate with your own, e.g. --gate any:drift:0.1,interval:5", file=sys.stderr)
    try:  # refuse a bad --default-gate / --default-cap before minutes of export (gate.jump only comes with the
        # simtask calibration of a tiny model)
        will_calibrate = calibrate and loaded.preset == "tiny" and not mismatch
        with_default_gate({"drift": {}, "consistency": {}, **({"jump": {}} if will_calibrate else {})}, default_gate,
                          default_cap, loaded.policy.config.n_action_steps)
    except ValueError as exc:
        raise ExportInputError(str(exc)) from None
    if stop_action is not None and len(stop_action) != action_dim:
        raise ExportInputError(f"--stop-action: expected {action_dim} values (action_dim), got {len(stop_action)}")
    _check_stop_action(stop_action if stop_action is not None else [0.0] * action_dim,
                       _bounds(loaded.stats, "action", BOUNDS_MARGIN), given=stop_action is not None)
    cfg = loaded.policy.config
    try:
        check_horizon(gate_horizon, cfg.n_action_steps)
    except ValueError as exc:
        raise ExportInputError(f"--gate-horizon: {exc}") from None
    robot = None if root is None else robot_section(root, action_dim, cfg.robot_state_feature.shape[0],
                                                    list(cfg.image_features))
    if root is not None:  # the robot section must describe the dataset this checkpoint was trained on
        check_dataset_stats(root, loaded.stats, ("observation.state", "action"))
    with atomic_folder(out) as tmp:
        model = loaded.policy.model.eval()
        n_cams = len(loaded.policy.config.image_features)
        inputs = example_inputs(model, n_cams, torch.Generator().manual_seed(0))
        graphs = {}
        bar = tqdm(GRAPHS.items(), desc="export", unit="graph", disable=not progress)
        for name, (wrapper, names_in, names_out) in bar:
            bar.set_postfix_str(name)
            graphs[name] = export_graph(wrapper(model).eval(), inputs[name], names_in, names_out, tmp / f"{name}.onnx")
        vlm_dir = Path(loaded.policy.config.vlm_model_name)
        shutil.copyfile(vlm_dir / "tokenizer.json", tmp / "tokenizer.json")
        tokenizer, tokenize = _tokenizer_fn(vlm_dir, loaded.policy.config.tokenizer_max_length)
        if root is not None:  # training truncated these; the exported runtime will refuse them
            warn_overlong("export", root, tokenizer, loaded.policy.config.tokenizer_max_length)
        if will_calibrate:
            horizon = gate_horizon if gate_horizon is not None else capped_horizon(default_gate, default_cap,
                                                                                   cfg.n_action_steps)
            gate = simtask_gate_calibration(loaded, tokenize, calib_episodes, horizon, progress=progress)
        else:
            gate = uncalibrated(model, mismatch or ("--no-calibration" if not calibrate else "random-weight preset"
                                                    if not from_checkpoint else f"{loaded.preset} preset"))
        try:
            gate = with_default_gate(gate, default_gate, default_cap, cfg.n_action_steps)
        except ValueError as exc:  # e.g. jump without a gate.jump calibration (--no-calibration)
            raise ExportInputError(str(exc)) from None
        files = file_records(tmp)
        manifest = build_manifest(loaded, graphs, gate, tokenizer, files, time.time() - started, stop_action, robot)
        stamp_identity(manifest, signing_key)
        (tmp / "manifest.json").write_text(strict_dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export SmolVLA-CLS to four ONNX graphs (prefix, main_expert, "
                                     "delta_expert, plan_encoder) + tokenizer + manifest.")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, default=None, help="lerobot pretrained_model folder")
    src.add_argument("--preset", default=None, help="export a random-weight preset instead (tiny | full)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/onnx"),
                        help="artifact folder to write: new, empty, or an earlier export (replaced whole)")
    parser.add_argument("--no-calibration", action="store_true", help="skip the simtask gate calibration")
    parser.add_argument("--calib-episodes", type=int, default=24,
                        help="simulated episodes for the gate calibration (at least 1; default 24)")
    parser.add_argument("--gate-horizon", type=int, default=None, metavar="H",
                        help="calibrate the gate on observation pairs < H ticks apart: the ticks a plan runs "
                             "before the gate's cap replans (default: the default gate's interval:k, else "
                             "n_action_steps; at most n_action_steps - L for an async runtime with delay L)")
    parser.add_argument("--stop-action", type=float, nargs="+", default=None,
                        help="raw action the runtime emits to stop (default: zeros = no displacement)")
    parser.add_argument("--sign-key", type=Path, default=None,
                        help="Ed25519 private key (python -m export.signing keygen) to sign the artifact digest")
    parser.add_argument("--dataset-root", type=Path, default=None,
                        help="LeRobotDataset for the manifest's robot section (default: the checkpoint's train_config)")
    parser.add_argument("--default-gate", default="auto",
                        help="the manifest's recommended gate (gate.default): auto = consistency unless drift's "
                             "calibration AUROC is higher by more than twice the standard error of the difference "
                             "(drift when consistency is uncalibrated; docs/03), or a spec: drift | consistency "
                             "| jump or any: of those, optionally with one interval:k, e.g. any:drift,interval:6")
    parser.add_argument("--default-cap", default="auto", metavar="auto|K|0",
                        help="plan-age cap added to gate.default as interval:K (unless the spec has one): auto = "
                             "round(0.5 x n_action_steps), 5 for n = 10 (the ratio was measured on the gate "
                             "benchmark with n = 10 only, docs/11); 0 = no cap")
    args = parser.parse_args(argv)
    checkpoint = None if args.preset is not None else (
        args.checkpoint or Path("outputs/train/default/checkpoints/last/pretrained_model"))
    try:  # argument mistakes first, before the (slow) model load
        check_out(args.out, checkpoint)
        if not args.no_calibration:
            check_calib_episodes(args.calib_episodes)
        key = load_private_key(args.sign_key, flag="--sign-key") if args.sign_key is not None else None
        loaded = load_preset(args.preset) if checkpoint is None else load_checkpoint(checkpoint)
        manifest = export_artifacts(loaded, args.out, calibrate=not args.no_calibration,
                                    calib_episodes=args.calib_episodes, stop_action=args.stop_action,
                                    signing_key=key, dataset_root=args.dataset_root,
                                    gate_horizon=args.gate_horizon, default_gate=args.default_gate,
                                    default_cap=args.default_cap)
    except (ExportInputError, SigningError, AtomicFolderError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB" for k, v in manifest["files"].items())
    print(f"[export] wrote {args.out} in {manifest['export_seconds']:.1f} s ({sizes})")
    signed = f", signed by key {manifest['identity']['signature']['key_id']}" if key is not None else " (unsigned)"
    print(f"[export] digest {manifest['identity']['digest']}{signed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
