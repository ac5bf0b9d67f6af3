"""Restricted unpickling of the two payloads LeRobot's robot client sends: `RemotePolicyConfig` (setup) and
`TimedObservation` (one robot observation). Plain `pickle.loads` on network bytes runs whatever callable the
sender names; here `find_class` admits exactly the classes the protocol carries, each mapped to a local
stand-in (no lerobot import), plus numpy's array/scalar reconstruction restricted to numeric dtypes. The
decoded object is then checked field by field. Anything else raises `PayloadError` naming what was refused.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar

import numpy as np

_HELPERS = "lerobot.async_inference.helpers"
# dtype codes numpy's pickles name: numbers and bools only (no object 'O', void 'V' or strings)
_DTYPES = {"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"}
MAX_ARRAY_BYTES = 64 << 20
MAX_ITEMS = 4096  # keys in an observation / features dict
MAX_NODES = 100_000  # values visited when checking one payload (memo references can nest a small pickle into a huge tree)
MAX_TIMESTEP = 1 << 62  # the client counts actions from 0; anything near 2**63 is not a robot's timeline
# bytes the decoder may materialise on top of twice the payload's length (an array's bytes are copied at
# most twice): a memo reference can feed one stored buffer to a reconstructor again and again, so every
# copy counts against this budget (see _Budget)
DECODE_SLACK_BYTES = 1 << 20


class PayloadError(ValueError):
    """A network payload was refused; the message says which class, field or limit."""


@dataclass
class RemotePolicyConfig:
    """Local stand-in for lerobot's RemotePolicyConfig (the client's setup message)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("policy_type", "pretrained_name_or_path", "lerobot_features",
                                           "actions_per_chunk")  # no default in lerobot's class either

    policy_type: str = ""
    pretrained_name_or_path: str = ""
    lerobot_features: dict = field(default_factory=dict)
    actions_per_chunk: int = 0
    device: str = "cpu"
    rename_map: dict = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        _set_fields(self, state, "RemotePolicyConfig")


@dataclass
class TimedObservation:
    """Local stand-in for lerobot's TimedObservation (one raw robot observation plus `task`)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("timestamp", "timestep", "observation")

    timestamp: float = 0.0
    timestep: int = 0
    observation: dict = field(default_factory=dict)
    must_go: bool = False

    def __setstate__(self, state: Any) -> None:
        _set_fields(self, state, "TimedObservation")


def _set_fields(obj: Any, state: Any, name: str) -> None:
    if not isinstance(state, dict):
        raise PayloadError(f"{name}: state must be a dict of fields, got {type(state).__name__}")
    known = set(obj.__dataclass_fields__)
    unknown = sorted(str(k) for k in state if k not in known)
    if unknown:
        raise PayloadError(f"{name}: unknown field(s) {unknown}")
    missing = [k for k in obj.REQUIRED if k not in state]
    if missing:
        raise PayloadError(f"{name}: missing field(s) {missing}")
    # NEWOBJ skipped __init__: optional fields the sender left out take the dataclass defaults
    for k in known - set(state):
        f = obj.__dataclass_fields__[k]
        setattr(obj, k, f.default_factory() if f.default is MISSING else f.default)
    for k, v in state.items():
        setattr(obj, k, v)


class _Budget:
    """Bytes the decoder may still materialise for one payload; every reconstructor copy spends from it."""

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise PayloadError(f"{what}: the payload decodes to more bytes than it carries (memo amplification); refused")


class _NdarrayType:
    """What `numpy.ndarray` resolves to: a token `_reconstruct` accepts, never callable by the pickle."""


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str) or spec not in _DTYPES:
        raise PayloadError(f"numpy dtype {spec!r} refused (numeric dtypes only)")
    return np.dtype(spec, copy=True)  # a copy: the pickle's BUILD must never touch numpy's shared descriptors


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not _NdarrayType:
        raise PayloadError("numpy _reconstruct: only plain ndarray is admitted")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)  # BUILD → __setstate__ checks size against data


def _scalar(dtype: Any, data: Any, *, budget: _Budget) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise PayloadError("numpy scalar refused (numeric dtype and matching byte count required)")
    budget.spend(len(data), "numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *, budget: _Budget) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(buf, (bytes, bytearray)):
        raise PayloadError("numpy _frombuffer refused (numeric dtype over bytes required)")
    if len(buf) > MAX_ARRAY_BYTES:
        raise PayloadError(f"numpy array of {len(buf)} bytes exceeds {MAX_ARRAY_BYTES}")
    budget.spend(2 * len(buf), "numpy _frombuffer")  # bytes(buf) and the array's own copy
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order="F" if order == "F" else "C").copy()


def _latin1(text: Any, encoding: Any = "latin1", *, budget: _Budget) -> bytes:
    """Protocol-2 pickles spell bytes as `_codecs.encode(str, 'latin1')`; only that form is admitted."""
    if not isinstance(text, str) or encoding != "latin1":
        raise PayloadError("_codecs.encode refused (only str → latin1 bytes)")
    budget.spend(len(text), "_codecs.encode")
    return text.encode("latin1")


_ADMITTED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1,
    (_HELPERS, "RemotePolicyConfig"): RemotePolicyConfig,
    (_HELPERS, "TimedObservation"): TimedObservation,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _dtype,
}
for _mod in ("numpy.core", "numpy._core"):
    _ADMITTED[(f"{_mod}.multiarray", "_reconstruct")] = _reconstruct
    _ADMITTED[(f"{_mod}.multiarray", "scalar")] = _scalar
    _ADMITTED[(f"{_mod}.numeric", "_frombuffer")] = _frombuffer
# copyreg.__newobj__ is never named by protocol >= 2 pickles (NEWOBJ opcode); nothing else is admitted.
_SPENDING = {_latin1, _scalar, _frombuffer}  # reconstructors that copy bytes: bound to the payload's budget


def _check_array_state(state: Any) -> None:
    """ndarray BUILD state (version, shape, dtype, fortran, raw bytes): numeric, consistent, bounded."""
    if not (isinstance(state, tuple) and len(state) == 5):
        raise PayloadError("numpy array state refused (malformed)")
    _, shape, dtype, _, raw = state
    if not (isinstance(shape, tuple) and len(shape) <= 8 and all(type(n) is int and n >= 0 for n in shape)):
        raise PayloadError("numpy array state refused (shape)")
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf":
        raise PayloadError("numpy array state refused (numeric dtype required)")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not isinstance(raw, bytes) or len(raw) != size or size > MAX_ARRAY_BYTES:
        raise PayloadError("numpy array state refused (raw data must be bytes matching the shape, bounded)")


class _Unpickler(pickle._Unpickler):  # the Python implementation, so BUILD can be checked before it runs
    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.budget = _Budget(2 * len(data) + DECODE_SLACK_BYTES)  # each stored byte copied at most twice

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = _ADMITTED[(module, name)]
        except KeyError:
            raise PayloadError(f"class {module}.{name} is not part of the protocol; refused") from None
        return functools.partial(found, budget=self.budget) if found in _SPENDING else found

    def persistent_load(self, pid: Any) -> Any:
        raise PayloadError("persistent ids are not part of the protocol; refused")

    def _load_build(self) -> None:
        """BUILD on a numpy dtype may only restate its canonical state (a forged state could flag a numeric
        dtype as holding object pointers); BUILD on an array only a checked numeric state."""
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            if state != inst.__reduce__()[2]:
                raise PayloadError(f"numpy dtype state {state!r:.80} refused (only the canonical state)")
            self.stack.pop()  # the fresh dtype already is what that state describes
            return
        if isinstance(inst, np.ndarray):
            _check_array_state(state)
            self.budget.spend(len(state[4]), "numpy array")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def loads(data: bytes, expect: type) -> Any:
    """Decode `data` as an instance of `expect` (RemotePolicyConfig or TimedObservation), or raise PayloadError."""
    try:
        obj = _Unpickler(data).load()
    except PayloadError:
        raise
    except Exception as exc:  # noqa: BLE001 — truncated/corrupt pickles raise many types
        raise PayloadError(f"undecodable payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, expect):
        raise PayloadError(f"expected a {expect.__name__}, got {type(obj).__name__}")
    check = _check_setup if expect is RemotePolicyConfig else _check_observation
    try:
        check(obj)
    except PayloadError:
        raise
    except Exception as exc:  # noqa: BLE001 — a field the checks did not foresee must still be a refusal
        raise PayloadError(f"{expect.__name__}: unreadable field ({type(exc).__name__}: {exc})") from None
    return obj


def _plain(value: Any, where: str, depth: int = 0, budget: list[int] | None = None) -> None:
    """Plain data only: str/int/float/bool/None, numeric arrays, and lists/tuples/dicts of them."""
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise PayloadError(f"{where}: more than {MAX_NODES} values")
    if depth > 8:
        raise PayloadError(f"{where}: nested too deep")
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.kind not in "biuf":
            raise PayloadError(f"{where}: array dtype {value.dtype} refused")
        return
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise PayloadError(f"{where}: {len(value)} items exceed {MAX_ITEMS}")
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]", depth + 1, budget)
        return
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise PayloadError(f"{where}: {len(value)} keys exceed {MAX_ITEMS}")
        for k, v in value.items():
            if not isinstance(k, str):
                raise PayloadError(f"{where}: key {k!r} is not a string")
            _plain(v, f"{where}.{k}", depth + 1, budget)
        return
    raise PayloadError(f"{where}: type {type(value).__name__} refused")


def _short(value: Any) -> str:
    """A number for a message: huge ints neither overflow a float format nor flood the log."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}…({len(text)} digits)"


def _typed(obj: Any, name: str, types: tuple[type, ...], where: str) -> None:
    v = getattr(obj, name)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise PayloadError(f"{where}.{name}: expected {'/'.join(t.__name__ for t in types)}, got {type(v).__name__}")


def _check_setup(cfg: RemotePolicyConfig) -> None:
    for name in ("policy_type", "pretrained_name_or_path", "device"):
        _typed(cfg, name, (str,), "RemotePolicyConfig")
    _typed(cfg, "actions_per_chunk", (int,), "RemotePolicyConfig")
    _typed(cfg, "lerobot_features", (dict,), "RemotePolicyConfig")
    _typed(cfg, "rename_map", (dict,), "RemotePolicyConfig")
    _plain(cfg.lerobot_features, "RemotePolicyConfig.lerobot_features")
    _plain(cfg.rename_map, "RemotePolicyConfig.rename_map")
    if cfg.actions_per_chunk < 1:
        raise PayloadError(f"RemotePolicyConfig.actions_per_chunk must be >= 1, got {cfg.actions_per_chunk}")


def _check_observation(obs: TimedObservation) -> None:
    _typed(obs, "timestamp", (float, int), "TimedObservation")
    _typed(obs, "timestep", (int,), "TimedObservation")
    _typed(obs, "must_go", (bool,), "TimedObservation")
    _typed(obs, "observation", (dict,), "TimedObservation")
    if not 0 <= obs.timestep <= MAX_TIMESTEP:
        raise PayloadError(f"TimedObservation.timestep must be in [0, 2**62], got {_short(obs.timestep)}")
    try:
        finite = math.isfinite(float(obs.timestamp))
    except OverflowError:
        finite = False
    if not finite:
        raise PayloadError(f"TimedObservation.timestamp must be a finite number of seconds, got {_short(obs.timestamp)}")
    _plain(obs.observation, "TimedObservation.observation")
