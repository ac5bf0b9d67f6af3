"""A killed writer's scratch folders next to the destination are deleted by the next writer to it; a live
writer's never are (each writer holds an flock on its own lock file while it lives)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
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
