"""Write an artifact folder under a temporary sibling name and move it into place only when complete,
so a failed or interrupted export/quantization never leaves a folder that looks valid."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """Yield an empty `.<name>.partial` folder next to `dst`; on normal exit it replaces `dst`, on any
    exception (KeyboardInterrupt included) it is deleted and `dst` is left as it was."""
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
