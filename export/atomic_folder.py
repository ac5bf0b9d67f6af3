"""Write an artifact folder under a temporary sibling name and move it into place only when complete,
so a failed or interrupted export/quantization never leaves a folder that looks valid, and never loses the
folder it replaces."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class AtomicFolderError(OSError):
    """The finished folder could not be moved into place; says where the old and the new folder are."""


@contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """Yield an empty private `.<name>.*.partial` folder next to `dst`; on normal exit it replaces `dst`, on any
    exception (KeyboardInterrupt included) it is deleted and `dst` is left as it was.

    The swap is two renames (`dst` → `.<name>.*.old`, new → `dst`), never a delete before the move: a failure
    leaves the old folder in place. A symlinked `dst` (a versioned deploy: `onnx -> onnx-v3`) keeps its link;
    the folder it points at is replaced. Concurrent exports to one `dst` each get their own temporary folder."""
    dst = Path(dst)
    if dst.is_symlink():
        dst = dst.resolve()
    if dst.exists() and not dst.is_dir():
        raise AtomicFolderError(f"{dst} exists and is not a folder: refusing to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        old.rmdir()  # only its unique name is needed
        dst.rename(old)
    try:
        tmp.rename(dst)
    except OSError as exc:
        if old is not None:
            old.rename(dst)
        raise AtomicFolderError(f"could not move the finished folder {tmp} to {dst} ({exc}); {dst} is unchanged "
                                f"and the new folder stays at {tmp}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():  # e.g. a file someone holds open on a network share: the new folder is in place anyway
            print(f"warning: the replaced folder {old} could not be deleted; remove it by hand", file=sys.stderr)
