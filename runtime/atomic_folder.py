"""Write an artifact folder under a temporary sibling name and move it into place only when complete,
so a failed or interrupted export/quantization never leaves a folder that looks valid, and never loses the
folder it replaces. `destination_problem` is the check every writer runs first: the swap replaces whatever
folder is at the destination, so only a new, empty or earlier output folder may be there."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock files, stale folders are left for the user
    fcntl = None  # type: ignore[assignment]

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_EXCHANGE_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


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


@functools.cache
def _renameat2() -> Any:
    """libc's renameat2, or None where there is none (not Linux, glibc < 2.28, musl without it)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE): a reader of either never finds it
    missing. False where the OS or the file system cannot (nothing changed); OSError for any other failure."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _scratch(lock: Path) -> tuple[Path, Path]:
    """The writer's new folder and the replaced folder's parking place that `lock` (`.<name>.<random>.lock`) guards."""
    return lock.with_suffix(".partial"), lock.with_suffix(".old")


def remove_stale_partials(dst: Path, legacy: Sequence[str] = ()) -> list[Path]:
    """Delete the `.partial` / `.old` folders that killed writers to `dst` left (their lock file is no longer
    locked), then those of earlier versions' writers (`remove_legacy_partials`, plus the caller's own `legacy`
    name patterns); a live writer's are never touched. Returns the lock files and legacy folders cleaned up."""
    if fcntl is None:
        return []
    return [*_remove_unlocked(dst), *remove_legacy_partials(dst, legacy)]


def _remove_unlocked(dst: Path) -> list[Path]:
    """The lock-file sweep of `remove_stale_partials`: the lock files of the killed writers cleaned up."""
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.[A-Za-z0-9_]+\.lock")
    try:
        locks = sorted(p for p in dst.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []
    cleaned = []
    for lock in locks:
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:  # gone meanwhile, or another account's
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _same_file(fd, lock):  # cleaned up and replaced by someone else meanwhile
                continue
            partial, old = _scratch(lock)
            if old.is_dir() and not dst.exists() and not dst.is_symlink():  # killed between its two renames
                old.rename(dst)  # the folder it replaced goes back
            leftovers = [p for p in (partial, old) if p.exists()]
            for p in leftovers:
                shutil.rmtree(p, ignore_errors=True)
            if not any(p.exists() for p in leftovers):
                lock.unlink()
                cleaned.append(lock)
        except OSError:  # BlockingIOError: its writer is alive
            continue
        finally:
            os.close(fd)
    return cleaned


# Scratch names earlier versions used next to a destination `<name>`, none with a lock file: the recorder's
# `.<name>.partial-<pid>`, the first export's `.<name>.partial`, and the unlocked `.<name>.<random>.partial|old`
LEGACY_QUIET_S = 24 * 3600.0  # untouched this long: no live writer (each wrote at least every few minutes)
_RANDOM = "[a-z0-9_]{8}"  # tempfile's random part


def _legacy_pattern(name: str) -> re.Pattern[str]:
    n = re.escape(name)
    return re.compile(rf"\.{n}\.partial(?:-(?P<pid>[1-9][0-9]{{0,9}}))?|\.{n}\.(?P<rand>{_RANDOM})\.(?P<kind>partial|old)")


def _pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists here (POSIX kill 0: nothing is sent); unknown counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # PermissionError: another account's live process
        return True
    return True


def _quiet_since(folder: Path) -> float:
    """The newest modification time of `folder` and of everything in it (links not followed)."""
    newest = folder.lstat().st_mtime
    for base, dirs, files in os.walk(folder):
        for entry in (*dirs, *files):
            newest = max(newest, os.lstat(os.path.join(base, entry)).st_mtime)
    return newest


def _ours_and_idle(folder: Path, now: float) -> bool:
    """A real folder (not a link) of this account, nothing in it modified for `LEGACY_QUIET_S`."""
    try:
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        return now - _quiet_since(folder) > LEGACY_QUIET_S
    except OSError:  # vanished or unreadable meanwhile: not ours to judge
        return False


def remove_legacy_partials(dst: Path, legacy: Sequence[str] = ()) -> list[Path]:
    """Delete the scratch folders that writers of earlier versions (no lock file) left next to `dst`, and those
    matching the caller's `legacy` patterns: only a folder of this account with exactly such a name, untouched
    for `LEGACY_QUIET_S`, whose writer's pid (where the name has one) is gone. With `dst` missing, a sole
    legacy `.old` (the folder a killed writer moved aside) goes back to `dst`; several are all kept.
    Returns the folders deleted or restored."""
    if fcntl is None:  # no POSIX kill 0 to ask whether a writer lives
        return []
    dst = Path(dst)
    pattern = _legacy_pattern(dst.name)
    extra = [re.compile(p) for p in legacy]
    try:
        names = sorted(p.name for p in dst.parent.iterdir())
    except OSError:
        return []
    now = time.time()
    found: list[Path] = []  # to delete
    olds: list[Path] = []  # legacy `.old` folders: deleted, or one restored where `dst` is missing
    for name in names:
        m = pattern.fullmatch(name)
        if m is None and not any(x.fullmatch(name) for x in extra):
            continue
        folder = dst.parent / name
        if m is not None and m["rand"] and (dst.parent / f".{dst.name}.{m['rand']}.lock").exists():
            continue  # a current writer's (lock-file sweep's business)
        if m is not None and m["pid"] and _pid_alive(int(m["pid"])):
            continue
        if _ours_and_idle(folder, now):
            (olds if m is not None and m["kind"] == "old" else found).append(folder)
    cleaned = []
    if olds and not dst.exists():  # `dst` missing (or a dangling link): an `.old` may be its only copy
        if len(olds) == 1 and not dst.is_symlink():
            try:
                olds[0].rename(dst)
                cleaned.append(olds[0])
            except OSError:
                pass
        olds = []  # several: which one held `dst` is unknown, so every one is kept
    for folder in [*found, *olds]:
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            cleaned.append(folder)
    return cleaned


def _claim(dst: Path) -> tuple[Path, Path, int]:
    """(new folder, lock file, its locked descriptor): `.<name>.<random>.partial` next to `dst`, guarded by a lock
    file this process holds until it ends, so a later run knows the folder is stale only once this one is gone."""
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".lock", dir=dst.parent)
        lock = Path(name)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, lock):  # a sweeper took it for a dead writer's before we locked it
                os.close(fd)
                continue
        tmp = _scratch(lock)[0]
        try:
            tmp.mkdir()
        except OSError:
            lock.unlink(missing_ok=True)
            os.close(fd)
            raise
        return tmp, lock, fd


def _swap(tmp: Path, dst: Path, old: Path) -> Path | None:
    """Put `tmp` at `dst`; returns where the replaced folder now is (`old`, or None if there was none)."""
    kept = f"the new folder stays at {tmp}"
    try:
        normal_permissions(tmp)
        if not dst.exists():
            old = None
        elif exchange(tmp, dst):  # the replaced folder is at tmp now: park it under the name sweeps use
            try:
                tmp.rename(old)
            except OSError:
                return tmp
            return old
        else:
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
    return old


@contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """Yield an empty `.<name>.<random>.partial` folder next to `dst`; on normal exit it gets normal permissions
    (umask respected) and replaces `dst`, on any exception (KeyboardInterrupt included) it is deleted and `dst`
    is left as it was.

    The swap is one atomic exchange where Linux offers it (renameat2 RENAME_EXCHANGE: `dst` never goes missing
    for a reader), else two renames (`dst` → `.<name>.<random>.old`, new → `dst`); never a delete before the
    move: a failure leaves the old folder in place. A symlinked `dst` (a versioned deploy: `onnx -> onnx-v3`)
    keeps its link; the folder it points at is replaced. Concurrent exports to one `dst` each get their own
    folder. Each writer holds a lock file (`.<name>.<random>.lock`) while it lives: the next writer to `dst`
    deletes the folders of writers that were killed (`remove_stale_partials`). Every file-system failure of the
    swap itself is an AtomicFolderError saying where each folder is."""
    dst = Path(dst)
    if dst.is_symlink():
        dst = dst.resolve()
    if dst.exists() and not dst.is_dir():
        raise AtomicFolderError(f"{dst} exists and is not a folder: refusing to replace it")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(dst)
        tmp, lock, fd = _claim(dst)
    except OSError as exc:
        raise AtomicFolderError(f"cannot create a folder next to {dst} ({exc.strerror or exc}); choose a "
                                "destination in a folder you can write") from None
    leftover: Path | None = tmp
    try:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            leftover = _swap(tmp, dst, _scratch(lock)[1])
        except AtomicFolderError:
            leftover = None  # the message names the folders it kept: the user's, never swept
            raise
        if leftover is not None:
            shutil.rmtree(leftover, ignore_errors=True)
            if leftover.exists():  # e.g. a file held open on a network share: the new folder is in place anyway
                print(f"warning: the replaced folder {leftover} could not be deleted; the next write to {dst} "
                      "retries, or remove it by hand", file=sys.stderr)
    finally:
        if leftover is None or not leftover.exists():
            lock.unlink(missing_ok=True)
        os.close(fd)  # a lock file left behind is unlocked now: the next writer to dst sweeps its folder
