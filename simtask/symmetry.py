"""Symmetries of the reach task: transforms that map a valid scene, its image and its expert actions
onto another valid scene with the same geometry of the solution.

The task is invariant under the 8 symmetries of the unit square (flips and the x/y transpose; the
expert's "head straight for the goal, norm-clipped" is equivariant under every one of them) and under
permutations of the RGB channels that map the task's colour set onto itself (red/green/blue are the
corners of the RGB cube; the grey background and the black/white agent are unchanged). Applying one to
a training frame gives a new scene whose instruction names a different disc: a cheap way to show the
policy many more colour-to-position bindings than the recorded scenes contain.

Conventions as in ``render.py``: pixel (row r, column c) covers x = (c + 0.5) / W, y = (r + 0.5) / H, so
a column flip is exactly x -> 1 - x and a transpose exactly x <-> y.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simtask.config import PALETTE


@dataclass(frozen=True)
class Symmetry:
    """One group element: optional transpose (applied first), then flips, plus an RGB channel
    permutation (output channel i takes input channel ``channels[i]``)."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    channels: tuple[int, int, int] = (0, 1, 2)

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_x or self.flip_y) and self.channels == (0, 1, 2)

    def point(self, xy: np.ndarray) -> np.ndarray:
        """A position (..., 2) in the unit square."""
        p = np.asarray(xy, dtype=np.float64)
        if self.transpose:
            p = p[..., ::-1]
        x = 1.0 - p[..., 0] if self.flip_x else p[..., 0]
        y = 1.0 - p[..., 1] if self.flip_y else p[..., 1]
        return np.stack([x, y], axis=-1)

    def vector(self, dxy: np.ndarray) -> np.ndarray:
        """A displacement (..., 2): like a point, but flips negate instead of reflecting about 0.5."""
        v = np.asarray(dxy, dtype=np.float64)
        if self.transpose:
            v = v[..., ::-1]
        x = -v[..., 0] if self.flip_x else v[..., 0]
        y = -v[..., 1] if self.flip_y else v[..., 1]
        return np.stack([x, y], axis=-1)

    def image(self, img: np.ndarray, channels_first: bool = False) -> np.ndarray:
        """An image (H, W, 3), or (3, H, W) with ``channels_first``; returns a new array."""
        a = np.asarray(img)
        if channels_first:
            a = np.moveaxis(a, 0, -1)
        if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] != a.shape[1]:
            raise ValueError(f"Symmetry.image: expected a square RGB image, got shape {np.shape(img)}")
        if self.transpose:
            a = a.transpose(1, 0, 2)
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1]
        a = a[..., list(self.channels)]
        return np.ascontiguousarray(np.moveaxis(a, -1, 0) if channels_first else a)

    def colour(self, name: str) -> str:
        """The palette colour that ``name`` becomes under the channel permutation."""
        rgb = PALETTE[name]
        mapped = tuple(rgb[c] for c in self.channels)
        for other, value in PALETTE.items():
            if value == mapped:
                return other
        raise ValueError(f"Symmetry.colour: {name!r} maps to {mapped}, which is not a palette colour")

    def instruction(self, text: str, colours: Sequence[str]) -> str:
        """Rename every colour word of ``colours`` in ``text`` (whole words, one pass)."""
        table = {c: self.colour(c) for c in colours}
        pattern = re.compile(r"\b(" + "|".join(re.escape(c) for c in table) + r")\b")
        return pattern.sub(lambda m: table[m.group(1)], text)


def colour_permutations(colours: Sequence[str]) -> list[tuple[int, int, int]]:
    """Channel permutations under which every colour of ``colours`` stays a colour of ``colours``."""
    wanted = {PALETTE[c] for c in colours}
    out = []
    for perm in itertools.permutations(range(3)):
        if all(tuple(PALETTE[c][i] for i in perm) in wanted for c in colours):
            out.append(perm)
    return out


def symmetry_group(colours: Sequence[str], geometric: bool = True, colour: bool = True) -> list[Symmetry]:
    """Every symmetry of the task with these disc colours (identity first)."""
    unknown = [c for c in colours if c not in PALETTE]
    if unknown:
        raise ValueError(f"symmetry_group: unknown colour(s) {unknown}; known: {sorted(PALETTE)}")
    perms = colour_permutations(colours) if colour else [(0, 1, 2)]
    flags = list(itertools.product((False, True), repeat=3)) if geometric else [(False, False, False)]
    group = [Symmetry(t, fx, fy, p) for p in perms for (t, fx, fy) in flags]
    group.sort(key=lambda s: not s.is_identity)
    return group
