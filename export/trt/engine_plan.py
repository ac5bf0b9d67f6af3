"""What to build, decided from the artifact manifest and the CLI — pure Python, no TensorRT.

Kept apart from `export.trt.engine_build` (which calls TensorRT) so that graph selection, shape profiles,
the trtexec command line and the fingerprint record can be tested on a machine without a GPU.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.trt.engine_precision import PRECISIONS
from runtime.artifact_files import sha256_and_size
from runtime.fingerprint import EngineFingerprint, sha256_bytes
from runtime.graph_io import GraphIOError, manifest_graph
from runtime.manifest import GraphSpec
from runtime.manifest_schema import FORMAT_VERSION as MANIFEST_FORMAT

GRAPHS = ("prefix", "main_expert", "delta_expert", "plan_encoder")  # runtime.manifest.GRAPH_NAMES
TIMING_CACHE_NAME = "timing.cache"
MAX_OPT_LEVEL = 5
# Ops of onnxruntime's dynamic quantization (export.int8.quantization): TensorRT's ONNX parser has none of them.
ORT_INTEGER_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                             "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "QGemm"})
QUANTIZED_HINT = ("build engines from the fp32 folder `make export` wrote, or from its fp16/bf16 folder "
                  "(`make mixed-precision`), not from onnxruntime's int8 graphs")


class PlanError(ValueError):
    """Bad CLI arguments or an artifact folder / manifest the builder cannot use."""


Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max shapes of one input for an optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise PlanError(f"profile ranks differ: {self.min} / {self.opt} / {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (1 <= lo <= mid <= hi):
                raise PlanError(f"profile needs 1 <= min <= opt <= max per axis, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class BuildOptions:
    """The builder settings the CLI collects (validated by `validate_options`)."""

    precision: str = "fp16"
    strongly_typed: bool = True
    workspace_gb: float = 4.0
    opt_level: int = 3
    timing_cache: bool = True
    dim_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # --dim SYMBOL=min:opt:max

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * (1 << 30))


@dataclass(frozen=True)
class GraphJob:
    """One engine to build: where its ONNX is, where the plan goes, its shape profile (if dynamic) and its I/O."""

    graph: str
    onnx_path: Path
    onnx_sha256: str
    plan_path: Path
    fingerprint_path: Path
    profile: dict[str, ShapeRange]
    io: GraphSpec  # the manifest's I/O, which the built engine must have
    data_sha256: str | None  # the manifest's hash of the external-data file (None: weights in the .onnx)


def validate_options(precision: str, workspace_gb: float, opt_level: int) -> None:
    """Reject impossible CLI values before any TensorRT work starts."""
    if precision not in PRECISIONS:
        raise PlanError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not workspace_gb > 0:
        raise PlanError(f"--workspace-gb must be > 0, got {workspace_gb}")
    if not 0 <= opt_level <= MAX_OPT_LEVEL:
        raise PlanError(f"--opt-level must be 0..{MAX_OPT_LEVEL}, got {opt_level}")


def parse_graphs(text: str | None) -> tuple[str, ...]:
    """`prefix,main_expert` → ('prefix', 'main_expert'); None/empty → all four, in contract order. A list that
    names no graph (`,`) is refused: it would build nothing and still exit 0."""
    if not text:
        return GRAPHS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise PlanError(f"--graphs {text!r} names no graph; list some of {','.join(GRAPHS)} or leave --graphs out "
                        "for all of them")
    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise PlanError(f"unknown graph(s) {', '.join(unknown)}; choose from {', '.join(GRAPHS)}")
    return names


def check_out(artifacts: Path, out: Path) -> None:
    """`--out` must be able to hold the plans, and lie apart from the artifact folder: checked before any build
    (else an existing file there, or plans mixed into the export that `make export` replaces whole, show up only
    after minutes of building)."""
    a, o = artifacts.resolve(), out.resolve()
    if o == a or a in o.parents:
        raise PlanError(f"--out {out} must be a folder apart from --artifacts {artifacts} (neither it nor inside "
                        "it: `make export` replaces that folder whole); e.g. --out artifacts/engines")
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "" if blocker == out else f": {blocker}"
        raise PlanError(f"--out {out}{where} exists and is not a folder; choose another --out")


def parse_dim_ranges(items: list[str] | None) -> dict[str, tuple[int, int, int]]:
    """`--dim lang_len=8:16:48` → {'lang_len': (8, 16, 48)}; `--dim x=16` means 16:16:16."""
    ranges: dict[str, tuple[int, int, int]] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        parts = spec.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if not sep or not name or len(values) not in (1, 3):
            raise PlanError(f"--dim {item!r}: expected SYMBOL=N or SYMBOL=MIN:OPT:MAX with integers")
        lo, mid, hi = (values * 3)[:3] if len(values) == 1 else values
        if not 1 <= lo <= mid <= hi:
            raise PlanError(f"--dim {item!r}: need 1 <= MIN <= OPT <= MAX")
        ranges[name] = (lo, mid, hi)
    return ranges


def load_manifest(artifacts: Path) -> dict[str, Any]:
    """Read `<artifacts>/manifest.json`, with one-line errors for the usual mistakes."""
    if artifacts.exists() and not artifacts.is_dir():
        raise PlanError(f"--artifacts {artifacts} is not a folder (expected the export folder with manifest.json)")
    if not artifacts.is_dir():
        raise PlanError(f"artifact folder {artifacts} does not exist (run `make export` first)")
    path = artifacts / "manifest.json"
    if not path.is_file():
        raise PlanError(f"{path} is missing: {artifacts} is not an export artifact folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("graphs"), dict):
        raise PlanError(f"{path} has no 'graphs' section")
    if manifest.get("format_version") != MANIFEST_FORMAT:
        raise PlanError(f"{path}: format_version {manifest.get('format_version')!r} is not supported "
                        f"(expected {MANIFEST_FORMAT}; re-export with `make export`)")
    quantization = manifest.get("quantization")
    if quantization:
        mode = quantization.get("mode", "quantized") if isinstance(quantization, dict) else "quantized"
        source = quantization.get("source") if isinstance(quantization, dict) else None
        raise PlanError(f"{artifacts} holds onnxruntime {mode} graphs (export.int8.quantization): TensorRT needs the "
                        f"fp32 export ({QUANTIZED_HINT}){f', e.g. --artifacts {source}' if source else ''}")
    lowered = manifest.get("mixed_precision")
    if isinstance(lowered, dict) and lowered.get("emulated"):
        raise PlanError(f"{artifacts} holds the fp32 emulation of {lowered.get('precision')} graphs (CPU checks only); "
                        f"build from the folder written without --emulated")
    return manifest


def onnx_quantization_ops(onnx_path: Path) -> list[str]:
    """onnxruntime-only integer ops (dynamic quantization) in an ONNX file; [] when it has none or when the
    `onnx` package is absent / the file cannot be parsed (TensorRT's parser then has the last word)."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 — not parseable here: leave it to TensorRT's parser
        return []
    return sorted({n.op_type for n in model.graph.node if n.op_type in ORT_INTEGER_OPS})


def is_dynamic(dim: Any) -> bool:
    """-1, None and symbolic names (strings) are dynamic dims in the manifest."""
    return not isinstance(dim, int) or isinstance(dim, bool) or dim < 0


def derive_profile(
    graph_entry: dict[str, Any], manifest_dims: dict[str, Any], dim_ranges: dict[str, tuple[int, int, int]]
) -> dict[str, ShapeRange]:
    """min/opt/max per input that has a dynamic dim; empty when the graph is fully static (the contract's case).

    A dynamic dim is resolved, in order, from: `--dim SYMBOL=...` (SYMBOL being the ONNX dim name or
    `input.axis`), a manifest `dims` entry of the same name (fixed), axis 0 → batch 1 (the contract is batch 1).
    """
    profile: dict[str, ShapeRange] = {}
    for spec in graph_entry.get("inputs", []):
        name, shape = spec["name"], spec["shape"]
        if not any(is_dynamic(d) for d in shape):
            continue
        lo: list[int] = []
        mid: list[int] = []
        hi: list[int] = []
        for axis, dim in enumerate(shape):
            if not is_dynamic(dim):
                triple = (dim, dim, dim)
            elif isinstance(dim, str) and dim in dim_ranges:
                triple = dim_ranges[dim]
            elif f"{name}.{axis}" in dim_ranges:
                triple = dim_ranges[f"{name}.{axis}"]
            elif isinstance(dim, str) and isinstance(manifest_dims.get(dim), int):
                fixed = manifest_dims[dim]
                triple = (fixed, fixed, fixed)
            elif axis == 0:
                triple = (1, 1, 1)
            else:
                label = dim if isinstance(dim, str) else f"{name}.{axis}"
                raise PlanError(
                    f"input {name!r} axis {axis} is dynamic ({dim!r}); give its range with --dim {label}=MIN:OPT:MAX"
                )
            lo.append(triple[0])
            mid.append(triple[1])
            hi.append(triple[2])
        profile[name] = ShapeRange(tuple(lo), tuple(mid), tuple(hi))
    return profile


def plan_jobs(
    artifacts: Path, out: Path, graphs: tuple[str, ...], manifest: dict[str, Any], options: BuildOptions
) -> list[GraphJob]:
    """One GraphJob per requested graph; checks that each ONNX file (and its external data) exists."""
    lowered = manifest.get("mixed_precision")
    if isinstance(lowered, dict) and options.strongly_typed and lowered.get("precision") != options.precision:
        raise PlanError(f"{artifacts} holds {lowered.get('precision')} mixed-precision graphs: a strongly typed build "
                        f"takes its precision from them, so pass --precision {lowered.get('precision')} "
                        f"(or build --precision {options.precision} from {lowered.get('source', 'the fp32 export')})")
    jobs = []
    for graph in graphs:
        entry = manifest["graphs"].get(graph)
        if not isinstance(entry, dict) or "file" not in entry:
            raise PlanError(f"manifest.json has no graphs.{graph} entry")
        onnx_path = artifacts / entry["file"]
        if not onnx_path.is_file():
            raise PlanError(f"{onnx_path} is missing (manifest graphs.{graph}.file)")
        data_file = entry.get("data_file")
        if data_file and not (artifacts / data_file).is_file():
            raise PlanError(f"{artifacts / data_file} is missing (external weights of {entry['file']})")
        integer_ops = onnx_quantization_ops(onnx_path)
        if integer_ops:
            raise PlanError(f"{onnx_path} is an onnxruntime dynamically quantized graph ({', '.join(integer_ops)}); "
                            f"TensorRT cannot parse it: {QUANTIZED_HINT}")
        sha = _file_sha256(manifest, entry["file"])
        data_sha = _file_sha256(manifest, data_file) if data_file else None
        for name, want in ((entry["file"], sha), (data_file, data_sha)):
            if name and sha256_and_size(artifacts / name)[0] != want:  # the fingerprint would vouch for other bytes
                raise PlanError(f"{artifacts / name} differs from its SHA-256 in manifest.json (changed since the "
                                "export): re-export, or copy the whole folder again, then build")
        try:
            io = manifest_graph(manifest, graph)  # checks the entries derive_profile reads
        except GraphIOError as exc:
            raise PlanError(str(exc)) from None
        profile = derive_profile(entry, manifest.get("dims", {}), options.dim_ranges)
        jobs.append(GraphJob(graph, onnx_path, sha, out / f"{graph}.plan", out / f"{graph}.fingerprint.json",
                             profile, io, data_sha))
    return jobs


def _file_sha256(manifest: dict[str, Any], name: str) -> str:
    """The manifest's recorded SHA-256 of one file (the fingerprint binds the engine to it)."""
    sha = manifest.get("files", {}).get(name, {}).get("sha256")
    if not isinstance(sha, str):
        raise PlanError(f"manifest.json has no files[{name!r}].sha256 (needed for the fingerprint)")
    return sha


def _shape_arg(profile: dict[str, ShapeRange], which: str) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, getattr(r, which)))}" for n, r in profile.items())


def trtexec_command(
    job: GraphJob,
    options: BuildOptions,
    precision_flags: tuple[str, ...],
    fp32_layers: tuple[str, ...] = (),
    timing_cache: Path | None = None,
) -> str:
    """The trtexec line that builds the same engine (and benchmarks it with CUDA graphs), for the record."""
    args = ["trtexec", f"--onnx={job.onnx_path}", f"--saveEngine={job.plan_path}", *precision_flags]
    if fp32_layers:
        pins = ",".join(f"{name}:fp32" for name in fp32_layers)
        args += [f"--layerPrecisions={pins}", f"--layerOutputTypes={pins}"]  # the build sets both (engine_build)
    args.append(f"--memPoolSize=workspace:{round(options.workspace_bytes / (1 << 20))}M")
    args.append(f"--builderOptimizationLevel={options.opt_level}")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    if job.profile:
        args += [f"--{k}Shapes={_shape_arg(job.profile, k)}" for k in ("min", "opt", "max")]
    args += ["--useCudaGraph", "--separateProfileRun"]
    return shlex.join(args)


def assemble_fingerprint(
    job: GraphJob,
    options: BuildOptions,
    plan: bytes,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    build_seconds: float,
) -> EngineFingerprint:
    """The fingerprint record for a freshly built plan."""
    return EngineFingerprint(
        graph=job.graph,
        onnx_sha256=job.onnx_sha256,
        data_sha256=job.data_sha256,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=(int(compute_capability[0]), int(compute_capability[1])),
        precision=options.precision,
        strongly_typed=options.strongly_typed,
        builder_optimization_level=options.opt_level,
        workspace_bytes=options.workspace_bytes,
        build_seconds=round(build_seconds, 3),
        engine_bytes=len(plan),
        engine_sha256=sha256_bytes(plan),
    )


def tensorrt_major(version: str) -> int:
    """'10.3.0.30' → 10."""
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise PlanError(f"cannot read the TensorRT version {version!r}") from None


def artifacts_for_engines(engines: Path, candidates: list[Path]) -> Path:
    """The artifact folder these engines were built from: the candidate whose prefix ONNX hash (and external-data
    hash, when the fingerprint records one) is the one in `prefix.fingerprint.json` (`make engine` builds
    fp16/bf16 from `<artifacts>-<precision>`, not `<artifacts>`)."""
    fingerprint = engines / "prefix.fingerprint.json"
    if not fingerprint.is_file():
        raise PlanError(f"{fingerprint} is missing (run `make engine` first)")
    recorded = json.loads(fingerprint.read_text(encoding="utf-8"))
    for folder in candidates:
        path = folder / "manifest.json"
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text(encoding="utf-8"))
        prefix = manifest.get("graphs", {}).get("prefix", {})
        files = manifest.get("files", {})
        data_sha = files.get(prefix.get("data_file"), {}).get("sha256") if prefix.get("data_file") else None
        if (files.get(prefix.get("file"), {}).get("sha256") == recorded.get("onnx_sha256")
                and ("data_sha256" not in recorded or recorded["data_sha256"] == data_sha)):
            return folder
    raise PlanError(f"none of {', '.join(map(str, candidates))} holds the ONNX the engines in {engines} were built "
                    "from; rebuild them with `make engine`")
