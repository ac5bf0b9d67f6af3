"""Task configuration for the 2-D reach task: one frozen dataclass, validated on construction.

Every field that a bad value could silently break is checked in ``__post_init__`` and the error
names the field, so a typo in a CLI flag or a YAML file fails loudly and at the right place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

IMAGE_KEY = "observation.images.top"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
STATE_DIM = 2
ACTION_DIM = 2
MAX_IMAGE_SIZE = 1024  # the renderer holds a few float64 [size, size] arrays per frame

# Saturated colours only: after SmolVLA's [-1, 1] scaling each one sits at a corner of the RGB cube,
# far from the mid-grey background (which maps to ~0).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}


@dataclass(frozen=True)
class TaskConfig:
    """All knobs of the reach task; coordinates live in the unit square, image row grows with y."""

    image_size: int = 64
    n_targets: int = 3
    max_steps: int = 60
    max_step: float = 0.06
    success_radius: float = 0.06
    target_radius: float = 0.09
    perturb_window: tuple[int, int] = (10, 30)
    min_jump: float = 0.3
    jump_clearance: float = 0.25  # the jumped target lands at least this far from the agent
    fps: int = 10
    colors: tuple[str, ...] = ("red", "green", "blue")
    # Layout: centre-to-centre distance between discs, distance of the agent start from every disc,
    # and the gap kept between a disc's edge and the image border.
    min_separation: float = 0.25
    start_clearance: float = 0.25
    edge_margin: float = 0.02
    # In a perturbed episode success is only counted from the jump on, so an agent that is already at
    # the target waits there and must then follow the jump (otherwise most episodes would end before
    # the jump and never test it).
    hold_until_perturb: bool = True
    background_gray: int = 128
    agent_radius: float = 0.045
    agent_core_radius: float = 0.022

    def __post_init__(self) -> None:
        # Accept lists (from JSON) for the tuple fields, keeping the dataclass hashable.
        object.__setattr__(self, "perturb_window", tuple(self.perturb_window))
        object.__setattr__(self, "colors", tuple(self.colors))
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"TaskConfig.{field}: {why} (got {getattr(self, field)!r})")

        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= MAX_IMAGE_SIZE:
            fail("image_size", f"must be an int in [16, {MAX_IMAGE_SIZE}]")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            fail("max_steps", "must be an int >= 1")
        if not isinstance(self.fps, int) or self.fps < 1:
            fail("fps", "must be an int >= 1")
        for name in ("max_step", "success_radius", "target_radius", "agent_radius", "agent_core_radius"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 0.5:
                fail(name, "must be a number in (0, 0.5)")
        for name in ("min_jump", "jump_clearance", "min_separation", "start_clearance", "edge_margin"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                fail(name, "must be a number in [0, 1)")
        if len(self.colors) == 0 or len(set(self.colors)) != len(self.colors):
            fail("colors", "must be a non-empty tuple of distinct colour names")
        unknown = [c for c in self.colors if c not in PALETTE]
        if unknown:
            fail("colors", f"unknown colour(s) {unknown}; known: {sorted(PALETTE)}")
        if not isinstance(self.n_targets, int) or not 1 <= self.n_targets <= len(self.colors):
            fail("n_targets", f"must be an int in [1, len(colors)={len(self.colors)}]")
        if len(self.perturb_window) != 2 or not all(isinstance(v, int) for v in self.perturb_window):
            fail("perturb_window", "must be a pair of ints (first, last)")
        lo, hi = self.perturb_window
        if not 1 <= lo <= hi < self.max_steps:
            fail("perturb_window", f"needs 1 <= first <= last < max_steps={self.max_steps}")
        if self.min_separation < 2 * self.target_radius:
            fail("min_separation", f"must be >= 2 * target_radius = {2 * self.target_radius} (discs may not overlap)")
        if self.success_radius > self.target_radius:
            fail("success_radius", f"must be <= target_radius={self.target_radius} (success means 'on the disc')")
        if self.agent_core_radius >= self.agent_radius:
            fail("agent_core_radius", f"must be < agent_radius={self.agent_radius}")
        if not isinstance(self.background_gray, int) or not 0 <= self.background_gray <= 255:
            fail("background_gray", "must be an int in [0, 255]")
        if self.target_radius + self.edge_margin >= 0.5:
            fail("edge_margin", "leaves no room for a disc centre")

    @property
    def target_low(self) -> float:
        """Smallest coordinate a disc centre may take (keeps the whole disc in the image)."""
        return self.target_radius + self.edge_margin

    @property
    def target_high(self) -> float:
        return 1.0 - self.target_low

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); ``from_dict`` inverts it."""
        d = asdict(self)
        d["perturb_window"] = list(self.perturb_window)
        d["colors"] = list(self.colors)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TaskConfig: unknown field(s) {unknown}")
        return cls(**dict(data))
