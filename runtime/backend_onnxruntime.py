"""onnxruntime backend: the reference (CPU) and CUDA execution of the four exported graphs.

CPU: plain `session.run` with host arrays; the prefix K/V handle is the dict of host arrays.
CUDA: IO binding; the prefix K/V/pad outputs stay on the GPU as OrtValues and are bound directly into
both experts, so per tick only images/tokens/state go up and v_t/delta/CLS (a few KB) come down.
Every graph output that reaches the host is checked finite (non-finite → BackendError); device-resident
K/V are checked indirectly through the expert outputs that consume them.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.backend import Backend, BackendError, PrefixState
from runtime.graph_io import DYNAMIC, LoadedTensor, check_graph_io
from runtime.manifest import GRAPH_NAMES, REEXPORT_HINT, GraphSpec, Manifest
from runtime.ort_model_bytes import load_graph_bytes

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool",
              "tensor(int32)": "int32", "tensor(float16)": "float16", "tensor(double)": "float64"}
_KV = ("prefix_k", "prefix_v", "prefix_pad")


def _check_finite(graph: str, name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BackendError(f"graph '{graph}' produced non-finite values in output '{name}'")


def session_io(session: ort.InferenceSession) -> list[LoadedTensor]:
    """The session's I/O as LoadedTensors (symbolic / unknown axes → DYNAMIC)."""
    return [LoadedTensor(a.name, kind, _ORT_TYPES.get(a.type, a.type),
                         tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC for d in a.shape))
            for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())) for a in args]


def check_session_io(session: ort.InferenceSession, spec: GraphSpec) -> None:
    """The ONNX graph's I/O names, kinds, dtypes and static shapes must equal the manifest's (else refuse)."""
    check_graph_io(spec, session_io(session), REEXPORT_HINT)


class OnnxRuntimeBackend(Backend):
    """Four onnxruntime sessions (prefix, main_expert, delta_expert, plan_encoder). device="cpu" | "cuda"; `strict_device` raises if CUDA did not load.

    `io_binding` (default: on exactly when CUDA loaded) selects the IO-binding path; forcing it on for
    CPU keeps K/V as CPU OrtValues, which lets the binding code be tested on machines without a GPU.
    `verify` (default on): each graph is built from the bytes of its .onnx and external-data file whose size and
    SHA-256 were checked against the manifest, held in process memory (runtime.ort_model_bytes): onnxruntime
    opens no artifact file, so a file rewritten or truncated later cannot change or crash a running session.
    verify=False skips only the hash check; the session is still built from bytes read once.
    `run_timeout_ms`: each graph call is terminated (onnxruntime RunOptions.terminate) after this long and
    raises BackendError, which the policy turns into a fault and a safe action instead of a hang.
    """

    name = "onnxruntime"

    def __init__(self, artifacts_dir: str | Path, manifest: Manifest, device: str = "cpu",
                 strict_device: bool = True, intra_op_threads: int = 0, device_id: int = 0,
                 io_binding: bool | None = None, verify: bool = True, run_timeout_ms: float | None = None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if run_timeout_ms is not None and (isinstance(run_timeout_ms, bool) or not isinstance(run_timeout_ms, (int, float))
                                           or not 0 < run_timeout_ms <= 600_000):
            raise ValueError(f"run_timeout_ms must be a number in (0, 600000] ms or None, got {run_timeout_ms!r}")
        self.run_timeout_ms = run_timeout_ms
        self.manifest = manifest
        self.device_id = device_id
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        root = Path(artifacts_dir)
        self.sessions: dict[str, ort.InferenceSession] = {}
        self._weights: dict[str, tuple[ort.OrtValue, ...]] = {}  # injected weights a session may use in place
        for g in GRAPH_NAMES:
            spec = manifest.graphs[g]
            graph = load_graph_bytes(root, spec, manifest.files, verify)
            opts = ort.SessionOptions()  # one per session: external initializers must not leak between graphs
            opts.intra_op_num_threads = intra_op_threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                sess = ort.InferenceSession(graph.model, sess_options=graph.add_to(opts), providers=providers)
            except Exception as exc:
                raise BackendError(f"onnxruntime could not load graph '{g}' from '{root / spec.file}': {exc}") from exc
            check_session_io(sess, spec)
            self.sessions[g] = sess
            self._weights[g] = graph.initializers  # (the model bytes themselves are not kept)
        loaded = self.sessions["prefix"].get_providers()
        self.on_gpu = device == "cuda" and "CUDAExecutionProvider" in loaded
        if device == "cuda" and not self.on_gpu:
            msg = (f"CUDAExecutionProvider did not load (session providers: {loaded}); install onnxruntime-gpu "
                   f"with a matching CUDA/cuDNN, or run with device='cpu'")
            if strict_device:
                raise BackendError(msg)
            warnings.warn(msg + " — running on CPU", RuntimeWarning, stacklevel=2)
        self.providers = loaded
        self.io_binding = self.on_gpu if io_binding is None else bool(io_binding)
        self._kv_device = "cuda" if self.on_gpu else "cpu"
        self._out_names = {g: [o.name for o in manifest.graphs[g].outputs] for g in GRAPH_NAMES}
        self._t = np.zeros(1, dtype=np.float32)  # reused time input

    # ----------------------------------------------------------------- graphs
    def run_prefix(self, images: np.ndarray, lang_tokens: np.ndarray, lang_mask: np.ndarray,
                   state: np.ndarray) -> PrefixState:
        feed = {"images": images, "lang_tokens": lang_tokens, "lang_mask": lang_mask, "state": state}
        if self.io_binding:
            return self._prefix_bound(feed)
        out = self._run("prefix", feed)
        for name, arr in out.items():
            _check_finite("prefix", name, arr)
        return PrefixState(obs_cls=out["obs_cls"], handle={k: out[k] for k in _KV})

    def run_main_expert(self, x_t: np.ndarray, t: float, prefix: PrefixState) -> np.ndarray:
        self._t[0] = t
        feed = {"x_t": x_t, "t": self._t}
        v = self._run_expert("main_expert", feed, prefix)["v_t"]
        _check_finite("main_expert", "v_t", v)
        return v

    def run_delta_expert(self, actions: np.ndarray, prefix: PrefixState) -> tuple[np.ndarray, np.ndarray]:
        out = self._run_expert("delta_expert", {"actions": actions}, prefix)
        for name, arr in out.items():
            _check_finite("delta_expert", name, arr)
        return out["delta"], out["act_cls"]

    def run_plan_encoder(self, plan: np.ndarray, plan_valid: np.ndarray) -> np.ndarray:
        act_cls = self._run("plan_encoder", {"plan": plan, "plan_valid": plan_valid})["act_cls"]
        _check_finite("plan_encoder", "act_cls", act_cls)
        return act_cls

    def close(self) -> None:
        self.sessions.clear()
        self._weights.clear()

    # ---------------------------------------------------------------- helpers
    @contextmanager
    def _watchdog(self, graph: str) -> Iterator[ort.RunOptions | None]:
        """RunOptions that a timer terminates after run_timeout_ms (None when no timeout is set)."""
        if self.run_timeout_ms is None:
            yield None
            return
        options = ort.RunOptions()
        timer = threading.Timer(self.run_timeout_ms / 1e3, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            yield options
        except Exception as exc:
            if options.terminate:
                raise BackendError(f"graph '{graph}' ran longer than run_timeout_ms={self.run_timeout_ms:g} "
                                   "and was terminated") from exc
            raise
        finally:
            timer.cancel()

    def _session(self, graph: str) -> ort.InferenceSession:
        try:
            return self.sessions[graph]
        except KeyError:
            raise BackendError("backend is closed") from None

    def _run(self, graph: str, feed: dict) -> dict[str, np.ndarray]:
        names = self._out_names[graph]
        try:
            if self.run_timeout_ms is None:  # no watchdog to arm: spare the context manager on every graph call
                outs = self._session(graph).run(names, feed)
            else:
                with self._watchdog(graph) as options:
                    outs = self._session(graph).run(names, feed, options)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"graph '{graph}' failed in onnxruntime: {exc}") from exc
        return dict(zip(names, outs))

    def _run_expert(self, graph: str, feed: dict, prefix: PrefixState) -> dict[str, np.ndarray]:
        if not self.io_binding:
            return self._run(graph, {**feed, **prefix.handle})
        sess = self._session(graph)
        try:
            io = sess.io_binding()
            for name, arr in feed.items():
                io.bind_cpu_input(name, np.ascontiguousarray(arr))
            for name in _KV:  # device-resident K/V from the prefix pass, no host round trip
                io.bind_ortvalue_input(name, prefix.handle[name])
            for name in self._out_names[graph]:
                io.bind_output(name, "cpu")
            with self._watchdog(graph) as options:
                sess.run_with_iobinding(io, options)
            outs = io.copy_outputs_to_cpu()
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"graph '{graph}' failed in onnxruntime (IO binding): {exc}") from exc
        return dict(zip(self._out_names[graph], outs))

    def _prefix_bound(self, feed: dict) -> PrefixState:
        sess = self._session("prefix")
        try:
            io = sess.io_binding()
            for name, arr in feed.items():
                io.bind_cpu_input(name, np.ascontiguousarray(arr))
            for name in self._out_names["prefix"]:  # get_outputs() follows this binding order
                if name in _KV:
                    io.bind_output(name, self._kv_device, self.device_id)
                else:
                    io.bind_output(name, "cpu")
            with self._watchdog("prefix") as options:
                sess.run_with_iobinding(io, options)
            values = dict(zip(self._out_names["prefix"], io.get_outputs()))
            obs_cls = values["obs_cls"].numpy()
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"graph 'prefix' failed in onnxruntime (IO binding): {exc}") from exc
        _check_finite("prefix", "obs_cls", obs_cls)
        return PrefixState(obs_cls=obs_cls, handle={k: values[k] for k in _KV})
