"""A killed writer's scratch folders next to the destination are deleted by the next writer to it; a live
writer's never are (each writer holds an flock on its own lock file while it lives)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.atomic_folder import atomic_folder, remove_stale_partials

ROOT = Path(__file__).resolve().parents[1]


def _writer(tmp_path: Path, dst: Path, tag: str, locked: bool, with_old: bool) -> tuple[Path, int | None]:
    """A writer's lock file, scratch folder (and parked old folder), its lock held (a live writer) or not."""
    lock = tmp_path / f".{dst.name}.{tag}.lock"
    lock.write_text("")
    for kind in ("partial", "old") if with_old else ("partial",):
        folder = lock.with_suffix(f".{kind}")
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"x" * 64)
    fd = None
    if locked:
        fd = os.open(lock, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return lock, fd


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writers=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=5))
def test_only_the_folders_of_dead_writers_are_swept(tmp_path_factory, writers):
    tmp_path = tmp_path_factory.mktemp("sweep")
    dst = tmp_path / "onnx"
    dst.mkdir()
    other = tmp_path / ".onnx-int8.abc.partial"  # another destination's scratch: never ours to judge
    other.mkdir()
    made = [_writer(tmp_path, dst, f"w{i}", alive, old) for i, (alive, old) in enumerate(writers)]
    try:
        cleaned = remove_stale_partials(dst)
        for (alive, _), (lock, _) in zip(writers, made, strict=True):
            partial = lock.with_suffix(".partial")
            if alive:
                assert lock.exists() and (partial / "weights.bin").exists() and lock not in cleaned
            else:
                assert not lock.exists() and not partial.exists() and not lock.with_suffix(".old").exists()
                assert lock in cleaned
        assert other.exists() and dst.exists()
    finally:
        for _, fd in made:
            if fd is not None:
                os.close(fd)


def test_a_writer_killed_between_its_two_renames_gets_the_old_folder_back(tmp_path):
    dst = tmp_path / "onnx"
    lock, _ = _writer(tmp_path, dst, "k1", locked=False, with_old=True)  # dst missing: moved aside, then killed
    remove_stale_partials(dst)
    assert (dst / "weights.bin").exists() and not lock.exists() and not lock.with_suffix(".partial").exists()


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from runtime.atomic_folder import atomic_folder
    with atomic_folder(Path(sys.argv[1])) as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 4096)
        print(tmp, flush=True)
        sys.stdin.readline()  # until the test says go on (or kills it)
        (tmp / "manifest.json").write_text(sys.argv[2])
""")


def _start_writer(dst: Path, text: str) -> tuple[subprocess.Popen, Path]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(dst), text], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return child, Path(child.stdout.readline().strip())


def test_the_next_export_removes_a_killed_exports_folder_but_not_a_live_ones(tmp_path):
    dst = tmp_path / "onnx"
    killed, killed_tmp = _start_writer(dst, "killed")
    live, live_tmp = _start_writer(dst, "live")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert (killed_tmp / "weights.bin").exists()  # what a SIGKILL leaves
    with atomic_folder(dst) as tmp:
        (tmp / "manifest.json").write_text("ours")
    assert not killed_tmp.exists() and (live_tmp / "weights.bin").exists()
    live.communicate("go\n", timeout=60)
    assert live.returncode == 0 and (dst / "manifest.json").read_text() == "live"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


_DAY = 24 * 3600


def _dead_pid() -> int:
    """The pid of a child that has already exited (reaped), so no process has it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def _legacy(parent: Path, name: str, age_s: float) -> Path:
    """A legacy writer's scratch folder with one file, everything last modified `age_s` ago."""
    folder = parent / name
    folder.mkdir()
    (folder / "data.parquet").write_bytes(b"x" * 64)
    then = time.time() - age_s
    for p in (folder / "data.parquet", folder):
        os.utime(p, (then, then))
    return folder


# (name for dst "reach" given a dead pid, whether a killed writer of an earlier version could have left it)
_LEGACY_NAMES = [
    (lambda pid: f".reach.partial-{pid}", True),   # the recorder before atomic_folder
    (lambda pid: ".reach.partial", True),          # the first export's fixed name
    (lambda pid: ".reach.k3x_9a0q.partial", True),  # atomic_folder before lock files
    (lambda pid: ".reach.k3x_9a0q.old", True),
    (lambda pid: f".reach.partial-{pid}.bak", False),  # anything else is not ours
    (lambda pid: ".reach.partial-abc", False),
    (lambda pid: ".reach.partial-0", False),
    (lambda pid: f".reachx.partial-{pid}", False),
    (lambda pid: ".reach.K3X9A0QZ.partial", False),
    (lambda pid: ".reach.k3x9a0q.partial", False),
    (lambda pid: "reach.partial", False),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(range(len(_LEGACY_NAMES))), idle=st.booleans(), dst_exists=st.booleans())
def test_legacy_scratch_folders_of_killed_writers_are_swept_and_nothing_else(tmp_path_factory, which, idle,
                                                                              dst_exists):
    tmp_path = tmp_path_factory.mktemp("legacy")
    dst = tmp_path / "reach"
    if dst_exists:
        dst.mkdir()
        (dst / "meta.json").write_text("current")
    make_name, ours = _LEGACY_NAMES[which]
    folder = _legacy(tmp_path, make_name(_dead_pid()), 2 * _DAY if idle else 60)
    with atomic_folder(dst) as tmp:
        (tmp / "meta.json").write_text("new")
    assert (dst / "meta.json").read_text() == "new"
    assert folder.exists() == (not (ours and idle)), folder.name


def test_a_legacy_recorders_folder_is_kept_while_its_pid_lives(tmp_path):
    live = _legacy(tmp_path, f".reach.partial-{os.getpid()}", 2 * _DAY)
    dead = _legacy(tmp_path, f".reach.partial-{_dead_pid()}", 2 * _DAY)
    cleaned = remove_stale_partials(tmp_path / "reach")
    assert live.exists() and (live / "data.parquet").exists() and live not in cleaned
    assert not dead.exists() and dead in cleaned


def test_a_current_writers_unlocked_looking_folder_is_left_to_the_lock_sweep(tmp_path):
    lock, fd = _writer(tmp_path, tmp_path / "reach", "k3x_9a0q", locked=True, with_old=True)
    try:
        for kind in ("partial", "old"):
            then = time.time() - 2 * _DAY
            os.utime(lock.with_suffix(f".{kind}") / "weights.bin", (then, then))
            os.utime(lock.with_suffix(f".{kind}"), (then, then))
        remove_stale_partials(tmp_path / "reach")
        assert (lock.with_suffix(".partial") / "weights.bin").exists()
        assert (lock.with_suffix(".old") / "weights.bin").exists()
    finally:
        os.close(fd)


def test_a_sole_legacy_old_folder_goes_back_when_the_destination_is_missing(tmp_path):
    _legacy(tmp_path, ".reach.k3x_9a0q.old", 2 * _DAY)
    remove_stale_partials(tmp_path / "reach")
    assert (tmp_path / "reach" / "data.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reach"]


def test_several_legacy_old_folders_are_all_kept_when_the_destination_is_missing(tmp_path):
    olds = [_legacy(tmp_path, f".reach.{tag}.old", 2 * _DAY) for tag in ("aaaaaaaa", "bbbbbbbb")]
    remove_stale_partials(tmp_path / "reach")
    assert not (tmp_path / "reach").exists() and all((o / "data.parquet").exists() for o in olds)


def test_a_linked_legacy_name_is_never_followed(tmp_path):
    target = _legacy(tmp_path, "keep-me", 2 * _DAY)
    (tmp_path / ".reach.partial").symlink_to(target)
    remove_stale_partials(tmp_path / "reach")
    assert (target / "data.parquet").exists() and (tmp_path / ".reach.partial").is_symlink()


def test_a_callers_own_legacy_pattern_is_swept_only_when_idle(tmp_path):
    old = _legacy(tmp_path, ".tiny-ab12cd34", 2 * _DAY)
    recent = _legacy(tmp_path, ".tiny-zz99yy88", 60)
    remove_stale_partials(tmp_path / "tiny-0123456789", legacy=[r"\.tiny-[a-z0-9_]{8}"])
    assert not old.exists() and recent.exists()


def test_a_legacy_old_folder_is_kept_while_the_destination_is_a_dangling_link(tmp_path):
    old = _legacy(tmp_path, ".reach.k3x_9a0q.old", 2 * _DAY)
    (tmp_path / "reach").symlink_to(tmp_path / "reach-v2")  # its target is gone: `.old` may be the only copy
    remove_stale_partials(tmp_path / "reach")
    assert (old / "data.parquet").exists() and (tmp_path / "reach").is_symlink()
