"""Write an artifact folder under a temporary sibling name and move it into place only when complete,
so a failed or interrupted export/quantization never leaves a folder that looks valid, and never loses the
folder it replaces. `destination_problem` is the check every writer runs first: the swap replaces whatever
folder is at the destination, so only a new, empty or earlier output folder may be there."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class AtomicFolderError(OSError):
    """The finished folder could not be moved into place; says where the old and the new folder are."""


def destination_problem(dst: Path, flag: str, replaceable: Callable[[dict[str, Any]], bool], refusal: str,
                        keep_apart: Sequence[tuple[str, Path]] = ()) -> str | None:
    """Why `dst` must not be given to `atomic_folder`, as one line naming `flag`, or None when it may.

    `atomic_folder` replaces the whole folder at `dst`, so that folder must be new, empty, or one whose
    manifest.json `replaceable` accepts (an earlier output of the same tool); `refusal` finishes the line that
    refuses any other folder. `dst` must also lie apart from each `(flag, folder)` in `keep_apart` (the inputs):
    neither that folder, nor inside it, nor around it — else the swap would delete the input it reads."""
    dst = Path(dst)
    resolved = dst.resolve()
    for other_flag, other in keep_apart:
        o = Path(other).resolve()
        if resolved == o or o in resolved.parents or resolved in o.parents:
            return f"{flag} {dst} must be a new folder outside {other_flag} {other}"
    if not dst.exists():
        return None
    if not dst.is_dir():
        return f"{flag} {dst} exists and is not a folder; choose another {flag}"
    if not any(dst.iterdir()):
        return None
    try:
        raw = json.loads((dst / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no manifest, unreadable, not JSON / not UTF-8
        raw = None
    if isinstance(raw, dict) and replaceable(raw):
        return None
    return f"{flag} {dst} {refusal}"


def process_umask() -> int:
    """The process umask, read from /proc where Linux has it (no change), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_permissions(folder: Path) -> None:
    """Give `folder` and everything in it the modes a plain mkdir / open would (0777 / 0666 minus the umask):
    mkdtemp makes it owner-only and onnx writes external data owner-only, which another account on the robot
    (the runtime's service user) could not read."""
    mask = process_umask()
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """Yield an empty `.<name>.*.partial` folder next to `dst`; on normal exit it gets normal permissions (umask
    respected) and replaces `dst`, on any exception (KeyboardInterrupt included) it is deleted and `dst` is left
    as it was.

    The swap is two renames (`dst` → `.<name>.*.old`, new → `dst`), never a delete before the move: a failure
    leaves the old folder in place. A symlinked `dst` (a versioned deploy: `onnx -> onnx-v3`) keeps its link;
    the folder it points at is replaced. Concurrent exports to one `dst` each get their own temporary folder.
    Every file-system failure of the swap itself is an AtomicFolderError saying where each folder is."""
    dst = Path(dst)
    if dst.is_symlink():
        dst = dst.resolve()
    if dst.exists() and not dst.is_dir():
        raise AtomicFolderError(f"{dst} exists and is not a folder: refusing to replace it")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    except OSError as exc:
        raise AtomicFolderError(f"cannot create a folder next to {dst} ({exc.strerror or exc}); choose a "
                                "destination in a folder you can write") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = f"the new folder stays at {tmp}"
    old = None
    try:
        normal_permissions(tmp)
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            old.rmdir()  # only its unique name is needed
            dst.rename(old)
    except OSError as exc:  # e.g. dst is a mount point (EBUSY), the parent became read-only
        raise AtomicFolderError(f"could not move {dst} aside to replace it ({exc.strerror or exc}); {dst} is "
                                f"unchanged and {kept}") from None
    try:
        tmp.rename(dst)
    except OSError as exc:
        where = f"{dst} is unchanged"
        if old is not None:
            try:
                old.rename(dst)
            except OSError:  # another writer put a folder at dst in between
                where = f"{dst} is another writer's folder, the one it replaced is at {old}"
        raise AtomicFolderError(f"could not move the finished folder {tmp} to {dst} ({exc.strerror or exc}); "
                                f"{where} and {kept}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():  # e.g. a file someone holds open on a network share: the new folder is in place anyway
            print(f"warning: the replaced folder {old} could not be deleted; remove it by hand", file=sys.stderr)
