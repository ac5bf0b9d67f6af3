"""The flow-time embedding: float32 ops only (TensorRT has no float64), yet within 1e-6 of lerobot's
float64 sinusoid for every float32 time in [0, 1], in PyTorch and in the exported ONNX graph."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lerobot.policies.smolvla.modeling_smolvla import create_sinusoidal_pos_embedding

from smolvla_cls.modeling_smolvla_cls import time_embedding

MIN_PERIOD, MAX_PERIOD = 4e-3, 4.0  # SmolVLA's defaults: the largest angle is 2*pi/4e-3 ~ 1571 rad at t = 1
TOL = 1e-6


def _reference(time: torch.Tensor, dim: int) -> torch.Tensor:
    return create_sinusoidal_pos_embedding(time, dim, MIN_PERIOD, MAX_PERIOD, device=torch.device("cpu"))


def _euler_times(num_steps: int) -> torch.Tensor:
    """The times lerobot's Euler loop feeds the expert (float32, as its sample_actions builds them)."""
    return torch.tensor([1.0 + step * (-1.0 / num_steps) for step in range(num_steps)], dtype=torch.float32)


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=64),
       dim=st.sampled_from([8, 32, 48, 480, 720]))
def test_matches_lerobot_float64_within_1e6(times, dim):
    t = torch.tensor(times, dtype=torch.float32)
    ours = time_embedding(t, dim, MIN_PERIOD, MAX_PERIOD)
    assert ours.dtype == torch.float32 and ours.shape == (len(times), dim)
    err = (ours.double() - _reference(t, dim)).abs().max().item()
    assert err <= TOL, err


@pytest.mark.parametrize("num_steps", [3, 10])
def test_euler_times_and_the_end_points(num_steps):
    t = torch.cat([_euler_times(num_steps), torch.tensor([0.0, 1.0, 0.5, 0.001])])
    err = (time_embedding(t, 720, MIN_PERIOD, MAX_PERIOD).double() - _reference(t, 720)).abs().max().item()
    assert err <= TOL, err


def test_odd_dimension_is_refused():
    with pytest.raises(ValueError, match="dim=7"):
        time_embedding(torch.zeros(1), 7, MIN_PERIOD, MAX_PERIOD)


class _Embedding(torch.nn.Module):
    def forward(self, t):
        return time_embedding(t, 48, MIN_PERIOD, MAX_PERIOD)


def test_exported_graph_keeps_the_accuracy(tmp_path):
    """onnxruntime runs the same float32 range reduction (Round, Mul, Sub: no float64 in the graph)."""
    import onnx
    import onnxruntime as ort

    from export.graphs.onnx_export import OPSET

    t = torch.cat([_euler_times(10), torch.rand(200, generator=torch.Generator().manual_seed(0)),
                   torch.tensor([0.0, 1.0])])
    path = tmp_path / "time.onnx"
    program = torch.onnx.export(_Embedding(), (t[:1],), dynamo=True, input_names=["t"], output_names=["emb"],
                                opset_version=OPSET, verbose=False)
    program.save(str(path))
    graph = onnx.load(str(path)).graph
    dtypes = {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output, *graph.value_info]}
    assert onnx.TensorProto.DOUBLE not in dtypes
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {"t": t[i: i + 1].numpy()})[0] for i in range(len(t))])  # batch 1
    err = np.abs(out.astype(np.float64) - _reference(t, 48).numpy()).max()
    assert err <= TOL, err
