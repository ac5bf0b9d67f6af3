"""`make engine`: build the TensorRT engines for the exported ONNX graphs on this device.

    python -m export.trt.build_engines --artifacts artifacts/onnx --out artifacts/engines --precision fp16 \
        [--workspace-gb 4] [--opt-level 3] [--weakly-typed] [--graphs prefix,main_expert,delta_expert,plan_encoder]

Every failure that is not a TensorRT build log ends in ONE line on stderr and a non-zero exit: bad
arguments (2), an unusable artifact folder (2), no TensorRT / no GPU / a TensorRT older than 10.0 or lacking an
API member the build needs here (3), build failure (1). Nodes the
installed TensorRT's ONNX parser would reject (export.trt.parser_compat) get one line each, then exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from export.trt.engine_plan import (
    PRECISIONS,
    BuildOptions,
    PlanError,
    check_out,
    load_manifest,
    parse_dim_ranges,
    parse_graphs,
    plan_jobs,
    validate_options,
)

PROG = "make engine"
EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_BUILD = 2, 3, 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + error on two lines; the contract here is one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see --help)\n")


def make_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m export.trt.build_engines", description="Build TensorRT engines for the exported ONNX graphs."
    )
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx"), help="export folder with manifest.json")
    p.add_argument("--out", type=Path, default=Path("artifacts/engines"), help="where <graph>.plan files go")
    p.add_argument("--precision", default="fp16", help=f"one of {', '.join(PRECISIONS)} (default fp16)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit (Orin Nano: 8 GB shared)")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5 (default 3)")
    p.add_argument(
        "--weakly-typed",
        action="store_true",
        help="TensorRT < 11 only: let TensorRT lower precision itself (norms/softmax pinned to fp32)",
    )
    p.add_argument("--graphs", default=None, help="comma list, default prefix,main_expert,delta_expert,plan_encoder")
    p.add_argument(
        "--dim",
        action="append",
        metavar="SYMBOL=MIN:OPT:MAX",
        help="range of a dynamic input dim (only needed for ONNX with dynamic shapes)",
    )
    p.add_argument("--no-timing-cache", action="store_true", help="do not read/write <out>/timing.cache")
    p.add_argument("--verbose", action="store_true", help="show TensorRT INFO messages")
    return p


def _fail(code: int, message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        validate_options(args.precision, args.workspace_gb, args.opt_level)
        graphs = parse_graphs(args.graphs)
        options = BuildOptions(
            precision=args.precision,
            strongly_typed=not args.weakly_typed,
            workspace_gb=args.workspace_gb,
            opt_level=args.opt_level,
            timing_cache=not args.no_timing_cache,
            dim_ranges=parse_dim_ranges(args.dim),
        )
        manifest = load_manifest(args.artifacts)
        check_out(args.artifacts, args.out)
        jobs = plan_jobs(args.artifacts, args.out, graphs, manifest, options)
    except PlanError as exc:
        _fail(EXIT_USAGE, str(exc))

    # Only now touch TensorRT / CUDA: argument mistakes are reported the same on every machine.
    from runtime.trt_env import TensorRTUnavailable, gpu, tensorrt_missing_reason

    where = (
        f"build engines on the target Jetson/GPU with JetPack's TensorRT; "
        f"the ONNX artifacts in {args.artifacts} are intact"
    )
    reason = tensorrt_missing_reason()
    if reason:
        _fail(EXIT_UNAVAILABLE, f"{reason} — {where}")
    try:
        device = gpu()
    except TensorRTUnavailable as exc:
        _fail(EXIT_UNAVAILABLE, f"{exc} — {where}")

    # Fail fast, one line per node, on what this TensorRT's ONNX parser would reject (export.trt.parser_compat).
    import tensorrt as trt

    from export.trt.parser_compat import check_folder

    rejected = check_folder(args.artifacts, [str(trt.__version__)])
    if rejected:
        for rejection in rejected:
            print(f"{PROG}: {rejection.line()}", file=sys.stderr)
        _fail(EXIT_USAGE, f"{len(rejected)} node(s) in {args.artifacts} would not parse; re-export with `make export` "
              "(its rewrites make the graphs portable) or use a TensorRT that accepts them")

    from export.trt.engine_build import BuildError, build_all
    from export.trt.engine_precision import PrecisionError
    from runtime.trt_api import TensorRTApiError

    try:
        build_all(jobs, options, device, args.out, verbose=args.verbose)
    except PrecisionError as exc:
        _fail(EXIT_USAGE, str(exc))
    except BuildError as exc:
        _fail(EXIT_BUILD, str(exc))
    except TensorRTApiError as exc:  # the installed TensorRT lacks an API member the build needs (named)
        _fail(EXIT_UNAVAILABLE, f"{exc} — {where}")
    _write_engine_identity(Path(args.out), manifest)
    return 0


def _write_engine_identity(out: Path, manifest: dict) -> None:
    """engines.identity.json: the fingerprints and the artifact digest they were built from (unsigned here)."""
    from runtime.engine_identity import write_engine_record
    from runtime.manifest import GRAPH_NAMES

    built = [g for g in GRAPH_NAMES if (out / f"{g}.fingerprint.json").exists()]
    digest = write_engine_record(out, manifest["identity"]["digest"], built)
    print(f"{PROG}: engine set {digest} (sign it: python -m export.signing sign-engines --engines {out})")


if __name__ == "__main__":
    sys.exit(main())
