"""VICReg against an independent, straightforward implementation of the reference formula."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smolvla_cls.vicreg import vicreg_loss


def reference_2d(x, y, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    """Loop-based re-statement of facebookresearch/vicreg main_vicreg.py for [B, D] inputs."""
    b, d = x.shape
    repr_loss = sum(((x[i, j] - y[i, j]) ** 2).item() for i in range(b) for j in range(d)) / (b * d)

    def centred(z):
        return [[z[i, j].item() - sum(z[k, j].item() for k in range(b)) / b for j in range(d)] for i in range(b)]

    xc, yc = centred(x), centred(y)

    def std_term(zc):
        total = 0.0
        for j in range(d):
            var = sum(zc[i][j] ** 2 for i in range(b)) / (b - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def cov_term(zc):
        total = 0.0
        for p in range(d):
            for q in range(d):
                if p != q:
                    c = sum(zc[i][p] * zc[i][q] for i in range(b)) / (b - 1)
                    total += c * c
        return total / d

    std_loss = std_term(xc) / 2 + std_term(yc) / 2
    cov_loss = cov_term(xc) + cov_term(yc)
    return lam * repr_loss + mu * std_loss + nu * cov_loss, repr_loss, std_loss, cov_loss


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 6), d=st.integers(1, 5), seed=st.integers(0, 10_000), scale=st.floats(0.01, 3.0))
def test_vicreg_matches_reference_2d(b, d, seed, scale):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, d, generator=g) * scale, torch.randn(b, d, generator=g) * scale
    ours = vicreg_loss(x, y)
    ref = reference_2d(x.double(), y.double())
    for got, want in zip((ours.loss, ours.invariance, ours.variance, ours.covariance), ref, strict=True):
        assert math.isclose(got.item(), want, rel_tol=1e-4, abs_tol=1e-5)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(2, 5), n=st.integers(1, 3), d=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_token_sets_use_per_token_batch_statistics(b, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    ours = vicreg_loss(x, y)
    per_token = [reference_2d(x[:, i].double(), y[:, i].double()) for i in range(n)]
    assert math.isclose(ours.variance.item(), sum(r[2] for r in per_token) / n, rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(ours.covariance.item(), sum(r[3] for r in per_token) / n, rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(ours.invariance.item(), torch.mean((x - y) ** 2).item(), rel_tol=1e-5)


def test_batch_of_one_is_finite_and_keeps_invariance_gradient():
    x = torch.randn(1, 2, 8, requires_grad=True)
    y = torch.randn(1, 2, 8)
    terms = vicreg_loss(x, y)
    assert all(torch.isfinite(t) for t in (terms.loss, terms.invariance, terms.variance, terms.covariance))
    terms.loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_fp32_under_bf16_inputs():
    x = torch.randn(4, 8).to(torch.bfloat16)
    y = torch.randn(4, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = vicreg_loss(x, y)
    assert terms.loss.dtype == torch.float32
    ref = vicreg_loss(x.float(), y.float())
    assert torch.allclose(terms.loss, ref.loss)


def test_shape_mismatch_names_inputs():
    try:
        vicreg_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    except ValueError as e:
        assert "z1" in str(e) and "z2" in str(e)
    else:
        raise AssertionError("expected ValueError")
