"""Path confinement and file integrity for the artifact folder: only listed files inside the folder are read.

Every name the manifest uses must resolve to a regular file inside the folder (no `..`, no absolute path, no
symlink leaving it), match its recorded SHA-256 and size, and every ONNX external-data location a graph refers
to must be that graph's listed `data_file`. Errors name the file in one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

MAX_READ = 64 << 20  # bytes read into memory at once (graph protos); larger files are streamed


class ArtifactFileError(ValueError):
    """A listed file escapes the folder, is missing, or differs from its record."""


def confined_path(root: Path, name: str) -> Path:
    """`root/name` after checking it stays inside `root` (symlinks resolved); raise naming the file otherwise."""
    pure = PurePosixPath(name) if isinstance(name, str) else None
    if (pure is None or not name or pure.is_absolute() or "\\" in name or "\x00" in name
            or any(part in ("..", ".") for part in pure.parts) or len(pure.parts) != 1):
        raise ArtifactFileError(f"artifact file {str(name)[:120]!r} is not a plain name inside the artifact folder "
                                "(no '/', '..' or absolute paths); re-export the artifacts")
    path = root / name
    if not path.exists() and not path.is_symlink():
        raise ArtifactFileError(f"artifact file '{name}' listed in the manifest is missing from '{root}'; "
                                "re-export the artifacts with `make export`")
    try:
        real, inside = path.resolve(), root.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13), a vanished parent
        raise ArtifactFileError(f"artifact file '{name}' cannot be resolved inside '{root}' (a symlink loop?): "
                                f"{str(exc)[:160]}") from None
    if real.parent != inside:
        raise ArtifactFileError(f"artifact file '{name}' is a link to '{real}', outside the artifact folder "
                                f"'{inside}': refused")
    if not real.is_file():
        raise ArtifactFileError(f"artifact file '{name}' is not a regular file")
    return real


def sha256_and_size(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    digest, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            n += len(block)
    return digest.hexdigest(), n


def verify_file(root: Path, name: str, record: Mapping[str, Any]) -> Path:
    """Confinement + size + SHA-256 of one listed file; returns its resolved path."""
    path = confined_path(root, name)
    size = path.stat().st_size
    if size != record["bytes"]:
        raise ArtifactFileError(f"artifact file '{name}' has {size} bytes, the manifest says {record['bytes']}: "
                                "the file is damaged or stale; re-export the artifacts with `make export`")
    sha, _ = sha256_and_size(path)
    if sha != record["sha256"]:
        raise ArtifactFileError(f"artifact file '{name}' fails its SHA-256 check: the file is damaged or stale; "
                                "re-export the artifacts with `make export`")
    return path


def external_data_locations(graph_path: Path) -> set[str]:
    """Every external-data `location` an ONNX file refers to (initializers, attributes, subgraphs)."""
    import onnx

    try:
        model = onnx.load_model(str(graph_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 — protobuf's DecodeError, onnx's own errors, OSError
        raise ArtifactFileError(f"artifact file '{graph_path.name}' is not a readable ONNX model ({str(exc)[:200]})") from None
    return {e.value for t, _ in external_tensors(model.graph) for e in t.external_data if e.key == "location"}


def external_tensors(graph: Any) -> Iterator[tuple[Any, bool]]:
    """(tensor, is a top-level initializer) for every tensor with external data anywhere in an ONNX graph:
    initializers, sparse values, attributes, subgraphs."""
    import onnx

    stack = [(graph, True)]
    while stack:
        g, top = stack.pop()
        tensors = [(t, top) for t in g.initializer] + [(s.values, False) for s in g.sparse_initializer]
        for node in g.node:
            for attr in node.attribute:
                tensors += [(t, False) for t in ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)]
                stack += [(sub, False) for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]
        yield from ((t, top_level) for t, top_level in tensors if t.data_location == onnx.TensorProto.EXTERNAL)


def check_external_data(root: Path, graph: str, file: str, data_file: str | None) -> None:
    """A graph may read external data only from its own listed `data_file`."""
    allowed = {data_file} if data_file else set()
    for location in sorted(external_data_locations(root / file)):
        if location not in allowed:
            raise ArtifactFileError(f"artifact file '{file}' (graph '{graph}') reads external data from "
                                    f"'{location[:120]}', which the manifest does not list as its data_file: refused")
