"""Replies for LeRobot's robot client, written opcode by opcode: a pickled `list[TimedAction]` whose
`action` fields unpickle as CPU float32 torch tensors (`torch.tensor([...])`), which is what the client's
`receive_actions` reads (`.device.type`, indexing, arithmetic when merging chunks). Writing the opcodes
lets the server name lerobot's and torch's classes without importing either (pickle's own writer would
import them to check the names). Protocol 2, the subset every Python 3 unpickler reads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

TIMED_ACTION = ("lerobot.async_inference.helpers", "TimedAction")
TENSOR_FACTORY = ("torch", "tensor")

_PROTO2, _STOP = b"\x80\x02", b"."
_MARK, _EMPTY_LIST, _EMPTY_DICT, _EMPTY_TUPLE = b"(", b"]", b"}", b")"
_APPENDS, _SETITEMS, _BUILD, _NEWOBJ, _REDUCE, _TUPLE1 = b"e", b"u", b"b", b"\x81", b"R", b"\x85"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _float(x: float) -> bytes:
    return b"G" + struct.pack(">d", float(x))


def _int(n: int) -> bytes:
    """LONG1: little-endian two's complement, any size."""
    n = int(n)
    raw = n.to_bytes((n.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tensor(values: np.ndarray) -> bytes:
    items = b"".join(_float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    return _global(*TENSOR_FACTORY) + _EMPTY_LIST + _MARK + items + _APPENDS + _TUPLE1 + _REDUCE


def timed_actions(actions: np.ndarray, first_timestep: int, first_timestamp: float, dt: float,
                  module: str = TIMED_ACTION[0]) -> bytes:
    """Pickle rows of `actions` [n, action_dim] as TimedAction(timestamp, timestep, action) numbered from
    `first_timestep`, `dt` seconds apart. An empty array gives an empty list."""
    rows: Sequence[np.ndarray] = list(np.asarray(actions, dtype=np.float32))
    out = [_PROTO2, _EMPTY_LIST]
    if len(rows):
        out.append(_MARK)
        for i, row in enumerate(rows):
            out += [_global(module, TIMED_ACTION[1]), _EMPTY_TUPLE, _NEWOBJ, _EMPTY_DICT, _MARK,
                    _str("timestamp"), _float(first_timestamp + i * dt),
                    _str("timestep"), _int(first_timestep + i),
                    _str("action"), _tensor(row), _SETITEMS, _BUILD]
        out.append(_APPENDS)
    out.append(_STOP)
    return b"".join(out)
