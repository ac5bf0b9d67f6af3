"""Record scripted-expert episodes of the simtask reach task into a LeRobotDataset (lerobot 0.4.4).

Why: training uses LeRobot's own dataset class, so the recorded data must be a real on-disk
LeRobotDataset (parquet + meta/info.json + meta/stats.json), not an ad-hoc array dump. Images are
stored as embedded PNGs ("image" dtype), which needs no video codec and works offline.

The recording is written to a sibling temp folder and moved into place at the end
(``runtime.atomic_folder``, stdlib only), so ``root`` either holds a complete dataset or nothing. ``meta/simtask_recording.json`` (our own sidecar) keeps
the recording parameters, the task config and per-episode seeds, which makes re-runs idempotent.

``hold_after_success`` = K >= 1 continues every episode K frames past success with the expert's hold
action, so that a long action chunk starting near the goal is supervised to its end (rows past the end
of an episode are padding, masked out of the loss). K = 0 records exactly what it always did.

CLI: python -m smolvla_cls.dataset_recording --root data/reach --episodes 1000 --seed 0 [--hold-after-success K]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic_folder import AtomicFolderError, atomic_folder, remove_stale_partials
from simtask import (
    ACTION_DIM,
    ACTION_KEY,
    IMAGE_KEY,
    STATE_DIM,
    STATE_KEY,
    ReachEnv,
    ScriptedExpert,
    TaskConfig,
    episode_seeds,
    run_expert_episode,
)

SIDECAR = "meta/simtask_recording.json"
SIDECAR_VERSION = 1
MAX_EPISODES = 1_000_000  # per-episode seeds and flags are built up front


@dataclass(frozen=True)
class RecordingConfig:
    """What to record. ``matches`` compares everything that changes the data (not root/force)."""

    root: Path
    repo_id: str = "local/simtask_reach"
    episodes: int = 1000
    seed: int = 0
    perturb_fraction: float = 0.3
    noise_std: float = 0.02
    image_size: int = 64
    use_videos: bool = False
    hold_after_success: int = 0
    force: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.task.image_size != self.image_size:
            object.__setattr__(
                self, "task", TaskConfig.from_dict({**self.task.to_dict(), "image_size": self.image_size})
            )

        def fail(name: str, why: str) -> None:
            raise ValueError(f"RecordingConfig.{name}: {why} (got {getattr(self, name)!r})")

        if not isinstance(self.episodes, int) or not 1 <= self.episodes <= MAX_EPISODES:
            fail("episodes", f"must be an int in [1, {MAX_EPISODES}]")
        if not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "must be an int >= 0")
        if not isinstance(self.perturb_fraction, (int, float)) or not 0.0 <= self.perturb_fraction <= 1.0:
            fail("perturb_fraction", "must be a number in [0, 1]")
        if not isinstance(self.noise_std, (int, float)) or not 0.0 <= self.noise_std < 0.1:
            fail("noise_std", "must be a number in [0, 0.1)")
        if not isinstance(self.repo_id, str) or self.repo_id.count("/") != 1:
            fail("repo_id", "must look like 'owner/name'")
        if not isinstance(self.hold_after_success, int) or not 0 <= self.hold_after_success <= 1000:
            fail("hold_after_success", "must be an int in [0, 1000]")
        if self.use_videos:
            fail("use_videos", "video storage is not supported here (needs an encoder); use images")

    def identity(self) -> dict[str, Any]:
        """The parameters that determine the recorded data (``hold_after_success`` only when >= 1, so a
        recording made before the option existed keeps its identity)."""
        ident: dict[str, Any] = {
            "repo_id": self.repo_id,
            "episodes": self.episodes,
            "seed": self.seed,
            "perturb_fraction": self.perturb_fraction,
            "noise_std": self.noise_std,
            "task": self.task.to_dict(),
        }
        if self.hold_after_success:
            ident["hold_after_success"] = self.hold_after_success
        return ident


@dataclass
class RecordingSummary:
    root: str
    episodes: int
    frames: int
    perturbed_episodes: int
    skipped_failed: int
    seconds: float
    bytes_on_disk: int
    reused: bool = False


def dataset_features(task: TaskConfig) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec: one camera image (HWC uint8), agent (x, y) state, 2-D action."""
    size = task.image_size
    return {
        IMAGE_KEY: {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"]},
        STATE_KEY: {"dtype": "float32", "shape": (STATE_DIM,), "names": ["x", "y"]},
        ACTION_KEY: {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy"]},
    }


def perturb_flags(n: int, fraction: float, seed: int) -> np.ndarray:
    """Exactly round(fraction * n) perturbed episodes, at seed-determined positions."""
    flags = np.zeros(n, dtype=bool)
    k = round(fraction * n)
    flags[np.random.default_rng([seed, 0x70657274]).permutation(n)[:k]] = True
    return flags


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove_empty_dirs(path: Path) -> None:
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        shutil.rmtree(path)


def read_sidecar(root: Path) -> dict[str, Any] | None:
    """The recording's sidecar (identity, task config, per-episode records); None if absent or unreadable."""
    try:
        return json.loads((root / SIDECAR).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # OSError: also a root that is a file
        return None


def _existing_matches(cfg: RecordingConfig) -> tuple[bool, str]:
    """Whether ``cfg.root`` already holds exactly this recording; the string says why not and what to do
    (--force only where --force would be allowed: `_replace_problem`)."""
    side = read_sidecar(cfg.root)
    if side is None and (cfg.root / "meta" / "info.json").is_file():  # e.g. the user's own robot recording
        return False, (f"{cfg.root} is a LeRobotDataset not recorded by simtask (no {SIDECAR}): train on it as it "
                       f"is (`make train DATASET_ROOT={cfg.root}` records nothing there) or pick another --root; "
                       "--force would delete it")
    problem = _replace_problem(cfg.root)
    if problem:
        return False, problem
    force = "; pass --force to overwrite"
    if not isinstance(side, dict) or not isinstance(side.get("identity"), dict):
        return False, f"{cfg.root / SIDECAR} is missing or unreadable (not a complete simtask recording){force}"
    old, new = side["identity"], cfg.identity()
    diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diffs:
        return False, f"{cfg.root} holds a different recording; differing field(s): {diffs}{force}"
    try:
        info = json.loads((cfg.root / "meta/info.json").read_text())
    except (OSError, ValueError) as exc:  # missing, unreadable, not JSON / not UTF-8
        return False, f"{cfg.root / 'meta/info.json'} is missing or unreadable ({type(exc).__name__}){force}"
    if not isinstance(info, dict) or info.get("total_episodes") != cfg.episodes:
        got = info.get("total_episodes") if isinstance(info, dict) else None
        return False, f"{cfg.root} has {got} episodes, expected {cfg.episodes}{force}"
    return True, ""


def _replace_problem(root: Path) -> str | None:
    """Why --force must not replace ``root`` (one line naming --root), or None: only an empty folder or one that
    looks like a dataset (meta/info.json or our sidecar) may be replaced, which guards against typos. The swap
    happens once the new recording is complete, so an interrupted re-record keeps the old one."""
    if not root.exists():
        return None
    if not root.is_dir():
        return f"--root: {root} exists and is not a directory"
    if any(root.iterdir()) and not (root / "meta/info.json").exists() and not (root / SIDECAR).exists():
        return (f"--root: refusing to replace {root}: it is not empty and holds no meta/info.json (not a "
                "dataset); pick another --root")
    return None


def _is_empty_dir(root: Path) -> bool:
    return root.is_dir() and not any(root.iterdir())


def record_dataset(cfg: RecordingConfig, progress: bool = True) -> RecordingSummary:
    """Record ``cfg.episodes`` successful expert episodes into ``cfg.root`` (see module docstring)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # type: ignore[import-untyped]  # heavy imports, only when recording
    from lerobot.utils.utils import SuppressProgressBars  # type: ignore[import-untyped]

    if cfg.root.exists() and not cfg.force and not _is_empty_dir(cfg.root):  # an empty folder: record into it
        ok, why = _existing_matches(cfg)
        if ok:
            remove_stale_partials(cfg.root)  # killed recorders' folders go on a reuse too (`make train` reuses)
            info = json.loads((cfg.root / "meta/info.json").read_text())
            side = read_sidecar(cfg.root) or {}
            return RecordingSummary(
                str(cfg.root),
                cfg.episodes,
                int(info["total_frames"]),
                int(side.get("perturbed_episodes", -1)),
                int(side.get("skipped_failed", -1)),
                0.0,
                _dir_bytes(cfg.root),
                reused=True,
            )
        raise FileExistsError(why)
    problem = _replace_problem(cfg.root) if cfg.force else None
    if problem:
        raise ValueError(problem)

    cfg.root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with atomic_folder(cfg.root) as tmp:  # also deletes the folders of recordings to cfg.root that were killed
        tmp.rmdir()  # LeRobotDataset.create makes the folder itself (and refuses an existing one)
        dataset = LeRobotDataset.create(
            repo_id=cfg.repo_id,
            fps=cfg.task.fps,
            features=dataset_features(cfg.task),
            root=tmp,
            robot_type="simtask_point",
            use_videos=False,
        )
        bar = _progress(cfg.episodes, progress)
        try:
            with SuppressProgressBars():  # datasets prints a 'Map' bar per saved episode otherwise
                records, skipped = _record_episodes(dataset, cfg, bar)
        except BaseException:
            dataset.finalize()
            raise
        finally:
            bar.close()
        dataset.finalize()
        _remove_empty_dirs(tmp / "images")  # lerobot's temporary PNG folder, empty once episodes are saved
        flags = perturb_flags(cfg.episodes, cfg.perturb_fraction, cfg.seed)
        frames = sum(r["length"] for r in records)
        sidecar = {
            "version": SIDECAR_VERSION,
            "identity": cfg.identity(),
            "perturbed_episodes": int(flags.sum()),
            "skipped_failed": skipped,
            "episodes": records,
        }
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    seconds = time.perf_counter() - t0
    return RecordingSummary(
        str(cfg.root), cfg.episodes, frames, int(flags.sum()), skipped, seconds, _dir_bytes(cfg.root)
    )


def _record_episodes(dataset: Any, cfg: RecordingConfig, bar: Any) -> tuple[list[dict[str, Any]], int]:
    """Roll out and save the episodes; returns per-episode records and the number of skipped failures."""
    env = ReachEnv(cfg.task)
    expert = ScriptedExpert(noise_std=cfg.noise_std, seed=cfg.seed)
    flags = perturb_flags(cfg.episodes, cfg.perturb_fraction, cfg.seed)
    # Twice as many candidate seeds as episodes: failed expert rollouts (rare) are skipped, not recorded.
    candidates = iter(episode_seeds(cfg.seed, 2 * cfg.episodes + 10, stream="train"))
    records, skipped = [], 0
    for index in range(cfg.episodes):
        perturb = bool(flags[index])
        while True:
            seed = next(candidates, None)
            if seed is None:  # more than half the rollouts failed: the task or the noise leaves the expert no chance
                raise ValueError(f"RecordingConfig.task / noise_std: the scripted expert failed {skipped} of "
                                 f"{skipped + index} rollouts (max_steps={cfg.task.max_steps}, noise_std="
                                 f"{cfg.noise_std}); give it more steps or less noise")
            ep = run_expert_episode(env, expert, seed=seed, perturb=perturb, hold_after_success=cfg.hold_after_success)
            if ep.success:
                break
            skipped += 1
        for obs, action in zip(ep.observations, ep.actions):
            dataset.add_frame(
                {IMAGE_KEY: obs[IMAGE_KEY], STATE_KEY: obs[STATE_KEY], ACTION_KEY: action, "task": obs["task"]}
            )
        dataset.save_episode()
        record = {
            "episode_index": index,
            "seed": seed,
            "perturb": perturb,
            "perturb_tick": ep.perturb_tick,
            "length": len(ep),
            "task": ep.observations[0]["task"],
        }
        if cfg.hold_after_success:
            record["success_length"] = ep.success_length
        records.append(record)
        bar.update(1)
    return records, skipped


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="recording", unit="ep")


def _parse_args(argv: list[str] | None) -> tuple[RecordingConfig, bool]:
    """CLI flags -> (config, quiet); a bad value exits 2 with a message naming the flag."""
    p = argparse.ArgumentParser(prog="python -m smolvla_cls.dataset_recording", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, type=Path, help="dataset folder to create")
    p.add_argument("--repo-id", default="local/simtask_reach", help="LeRobot repo_id stored in the dataset")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perturb-fraction", type=float, default=0.3, help="share of episodes with a target jump")
    p.add_argument("--noise-std", type=float, default=0.02, help="std of the executed-action noise")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--hold-after-success", type=int, default=0, metavar="K",
                   help="continue each episode K frames past success with the expert's hold action (0: end at success)")
    p.add_argument("--force", action="store_true", help="delete and re-record an existing root")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    # a file where the dataset folder (or a folder above it) must go: named here, not a NotADirectoryError later
    existing = next(q for q in (a.root, *a.root.absolute().parents) if q.exists())
    if not existing.is_dir():
        p.error(f"--root {a.root}: {existing} is a file, not a folder; pick another --root")
    try:
        cfg = RecordingConfig(
            root=a.root,
            repo_id=a.repo_id,
            episodes=a.episodes,
            seed=a.seed,
            perturb_fraction=a.perturb_fraction,
            noise_std=a.noise_std,
            image_size=a.image_size,
            hold_after_success=a.hold_after_success,
            force=a.force,
        )
    except ValueError as e:
        p.error(str(e).replace("RecordingConfig.", "--").replace("TaskConfig.", "--").replace("_", "-"))
    return cfg, a.quiet


def main(argv: list[str] | None = None) -> int:
    cfg, quiet = _parse_args(argv)
    try:
        summary = record_dataset(cfg, progress=not quiet)
    except (FileExistsError, ValueError, AtomicFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary.reused:
        print(
            f"{cfg.root} already holds this recording ({summary.episodes} episodes, {summary.frames} frames); "
            "nothing to do (use --force to re-record)"
        )
    else:
        print(
            f"recorded {summary.episodes} episodes / {summary.frames} frames "
            f"({summary.perturbed_episodes} perturbed, {summary.skipped_failed} failed rollouts skipped) "
            f"in {summary.seconds:.1f} s; {summary.bytes_on_disk / 1e6:.1f} MB at {cfg.root}"
        )
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
