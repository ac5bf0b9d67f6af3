"""VICReg (Bardes et al.) between obs-CLS and act-CLS embeddings, faithful to the reference code.

reference (facebookresearch/vicreg, main_vicreg.py), for x, y [B, D]:
    repr = mse(x, y); std = mean(relu(γ - sqrt(var(x)+eps)))/2 + same(y)/2 (unbiased var)
    cov  = sum(offdiag(cov(x))²)/D + sum(offdiag(cov(y))²)/D, cov = xcᵀxc/(B-1)
    loss = λ·repr + μ·std + ν·cov
For token sets [B, N, D] the variance and covariance are computed per token position across the batch
and averaged over positions (as VICRegL does), so they measure diversity across samples, not between
the tokens of one sample. Everything runs in fp32 (also under bf16 autocast). At B = 1 the variance and
covariance are undefined: they are reported as 0 instead of NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class VICRegTerms:
    loss: torch.Tensor
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def _variance_term(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    # z [B, N, D] centred; unbiased variance across the batch, per (token, dim)
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(gamma - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    b, _, d = z.shape
    zt = z.transpose(0, 1)  # [N, B, D]
    cov = zt.transpose(1, 2) @ zt / (b - 1)  # [N, D, D]
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    return (off.pow(2).sum(dim=(1, 2)) / d).mean()


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_param: float = 25.0, mu_param: float = 25.0,
                nu_param: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> VICRegTerms:
    """VICReg between z1 and z2 of shape [B, D] or [B, N, D] (token i of z1 paired with token i of z2)."""
    if z1.shape != z2.shape or z1.ndim not in (2, 3):
        raise ValueError(f"vicreg_loss: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must be equal [B, D] or [B, N, D]")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        x = z1.float() if z1.ndim == 3 else z1.float()[:, None]
        y = z2.float() if z2.ndim == 3 else z2.float()[:, None]
        invariance = F.mse_loss(x, y)
        if x.shape[0] > 1:
            x = x - x.mean(dim=0)
            y = y - y.mean(dim=0)
            variance = _variance_term(x, gamma, eps) / 2 + _variance_term(y, gamma, eps) / 2
            covariance = _covariance_term(x) + _covariance_term(y)
        else:  # B = 1: no batch statistics exist; keep the graph (and gradients of invariance) finite
            variance = invariance.new_zeros(())
            covariance = invariance.new_zeros(())
        loss = lambda_param * invariance + mu_param * variance + nu_param * covariance
    return VICRegTerms(loss, invariance, variance, covariance)
