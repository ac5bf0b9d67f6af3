"""Our side: the three exported graphs under onnxruntime CPU (each graph, full resample, gated kept ticks,
`EdgePolicy.step` ticks), on the fp32 folder or its int8 copy."""

from __future__ import annotations

import time

import numpy as np

from scripts.bench.artifacts import INSTRUCTION
from scripts.bench.measure import reps_for, reset_peak_rss, rss_mb, summarize, timed


def child_ort(args) -> dict:
    import onnxruntime as ort

    from runtime.backend_onnxruntime import OnnxRuntimeBackend
    from runtime.gate import cosine_distance, embed
    from runtime.manifest import Manifest
    from runtime.policy import EdgePolicy, delta_input
    from runtime.preprocess import StateNormalizer

    big, small, warm = reps_for(args.config, args.reps, args.smoke)
    m = Manifest.load(args.artifacts, verify_hashes=False)  # the parent verified the hashes once
    d = m.dims
    t0 = time.perf_counter()
    backend = OnnxRuntimeBackend(args.artifacts, m, intra_op_threads=args.threads)
    load_s = time.perf_counter() - t0
    mem_loaded = rss_mb()
    reset_peak_rss()
    data = np.load(args.inputs)
    images = np.ascontiguousarray(data["images"], dtype=np.float32)
    tokens, mask = data["lang_tokens"].astype(np.int64), data["lang_mask"].astype(bool)
    state = StateNormalizer(m.state_norm, d.max_state_dim)(data["state"][0])
    noise = data["noise"].astype(np.float32)
    n = d.num_steps

    def resample(with_delta: bool = True):
        st = {}
        t = time.perf_counter()
        pre = backend.run_prefix(images, tokens, mask, state)
        t1 = time.perf_counter()
        x = backend.denoise(noise, n, pre)
        t2 = time.perf_counter()
        if with_delta:
            plan = x[0]
            delta, _ = backend.run_delta_expert(delta_input(plan, d.chunk_size), pre)
            x = plan[None] + delta
        t3 = time.perf_counter()
        st.update(prefix=(t1 - t) * 1e3, denoise=(t2 - t1) * 1e3, delta=(t3 - t2) * 1e3, total=(t3 - t) * 1e3)
        return x, pre, st

    for _ in range(warm):
        resample()
    x_ref, pre, _ = resample(with_delta=False)  # same noise as lerobot → parity
    chunk = x_ref[0, :, : d.action_dim].tolist()
    x_full, _, _ = resample()  # full resample (with the delta step), same noise: the int8-vs-fp32 comparison
    chunk_resample = x_full[0, :, : d.action_dim].tolist()
    sec = big if args.config != "full" else max(2, big - 2)  # secondary full-size rows: fewer reps (time budget)
    prefix_ms = timed(lambda: backend.run_prefix(images, tokens, mask, state), sec)
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal(m.plan_shape, dtype=np.float32)
    main_ms = timed(lambda: backend.run_main_expert(x_t, 0.5, pre), small, warmup=1)
    plan = x_ref[0]
    dinp = delta_input(plan[3:], d.chunk_size)  # a remaining plan after 3 executed actions
    delta_ms = timed(lambda: backend.run_delta_expert(dinp, pre), small, warmup=1)
    stages: dict[str, list[float]] = {"prefix": [], "denoise": [], "delta": [], "total": []}
    for _ in range(big):
        _, _, st = resample()
        for k, acc in stages.items():
            acc.append(st[k])
    plan_emb = embed(pre.obs_cls)

    def keep_drift():
        p = backend.run_prefix(images, tokens, mask, state)
        return cosine_distance(embed(p.obs_cls), plan_emb) > 1.0

    def keep_consistency():
        p = backend.run_prefix(images, tokens, mask, state)
        _, act_cls = backend.run_delta_expert(dinp, p)
        return cosine_distance(embed(p.obs_cls), embed(act_cls)) > 1.0

    drift_ms = timed(keep_drift, sec)
    cons_ms = timed(keep_consistency, sec)

    # EdgePolicy ticks on the same backend (whole chain: validation, preprocessing, gate, safety)
    obs = {cam: images[0, i] for i, cam in enumerate(m.camera_keys)}
    obs.update({m.state_key: data["state"][0].astype(np.float32), "task": INSTRUCTION})
    out_ticks = {}
    for gate, ticks in (("always", sec), ("never", (1 if args.smoke or args.config == "full" else 3) * d.n_action_steps)):
        pol = EdgePolicy(args.artifacts, backend=backend, gate=gate, seed=0, verify_hashes=False)
        pol.warmup(obs, runs=1)
        ms = []
        for _ in range(ticks):
            pol.step(obs)
            ms.append(pol.last_info.total_ms)
        out_ticks[gate] = {**summarize(ms), "ticks": ticks, "amortised_ms": float(np.mean(ms)),
                           "resamples": pol.counters.resamples}
    backend.close()
    return {
        "onnxruntime": ort.__version__, "providers": backend.providers, "intra_op_threads": args.threads,
        "graph_optimization_level": "ORT_ENABLE_ALL", "session_load_s": load_s,
        "prefix": summarize(prefix_ms), "main_step": summarize(main_ms), "delta": summarize(delta_ms),
        "resample": {k: summarize(v) for k, v in stages.items()},
        "resample_no_delta": summarize(np.asarray(stages["prefix"]) + np.asarray(stages["denoise"])),
        "gated_keep_drift": summarize(drift_ms), "gated_keep_consistency": summarize(cons_ms),
        "edge_reactive": out_ticks["always"], "edge_open_loop": out_ticks["never"],
        "chunk": chunk, "chunk_resample": chunk_resample, "obs_emb": embed(pre.obs_cls).tolist(),
        "quantization": m.raw.get("quantization"), "memory": {"after_load": mem_loaded, "end": rss_mb()},
    }
