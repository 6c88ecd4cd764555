"""SO(3) building blocks shared by the solvers and the metrics (batched torch, float64).

Rotations are (..., 3, 3) matrices acting on column vectors. Axis-angle vectors w (..., 3)
are in radians: Exp(w) rotates by |w| about w/|w| (right-hand rule).
"""
from __future__ import annotations

import torch


def rotation_from_covariance(C: torch.Tensor) -> torch.Tensor:
    """The rotation Q (..., 3, 3) in SO(3) maximising trace(Q^T C) (orthogonal Procrustes with the
    determinant fix: Q = U diag(1, 1, det(U V^T)) V^T for C = U S V^T).

    Aligning vectors a_i ~ Q b_i: C = sum_i w_i a_i b_i^T. Chordal mean of rotations: C = sum R_i.

    Computed in float32 or float64 with autocast off: C in a half type (a bf16-autocast training
    step's read-out) comes back as float32, since SVD and det have no half-precision kernels."""
    if C.dtype not in (torch.float32, torch.float64):
        C = C.float()
    with torch.autocast(C.device.type, enabled=False):
        U, _, Vh = torch.linalg.svd(C)
        det = torch.linalg.det(U @ Vh)
        D = torch.ones(C.shape[:-1], dtype=C.dtype, device=C.device)
        D[..., 2] = torch.sign(det) + (det == 0).to(C.dtype)
        return U @ (D[..., :, None] * Vh)


def skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices [w]_x (..., 3, 3) of vectors w (..., 3): [w]_x v = w x v."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([
        torch.stack([z, -w[..., 2], w[..., 1]], -1),
        torch.stack([w[..., 2], z, -w[..., 0]], -1),
        torch.stack([-w[..., 1], w[..., 0], z], -1),
    ], -2)


def _axis_part(M: torch.Tensor) -> torch.Tensor:
    """(..., 3) vector of M - M^T: 2 sin(theta) * axis for a rotation M."""
    return torch.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0],
                        M[..., 1, 0] - M[..., 0, 1]], -1)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from axis-angle vectors w (..., 3) (Rodrigues)."""
    theta = torch.linalg.norm(w, dim=-1)[..., None, None]
    W = skew(w)
    small = theta < 1e-8
    t = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta**2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(t)) / t**2)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(W)
    return eye + a * W + b * (W @ W)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors (..., 3), angle in [0, pi], of rotation matrices R (..., 3, 3)."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    v = _axis_part(R)
    sin = torch.sin(theta)
    small = theta < 1e-6
    safe_sin = torch.where(small, torch.ones_like(sin), sin)
    scale = torch.where(small, 0.5 + theta**2 / 12, theta / (2 * safe_sin))
    w = scale[..., None] * v
    # near pi the antisymmetric part vanishes: read the axis from the symmetric part instead
    near_pi = theta > torch.pi - 1e-3
    if bool(near_pi.any()):
        S = (R + R.transpose(-1, -2)) / 2 - cos[..., None, None] * torch.eye(3, dtype=R.dtype)
        k = S.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = torch.gather(S, -1, k[..., None, None].expand(*S.shape[:-1], 1))[..., 0]
        axis = axis / torch.linalg.norm(axis, dim=-1, keepdim=True).clamp_min(1e-12)
        axis = axis * torch.where((axis * v).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        w = torch.where(near_pi[..., None], theta[..., None] * axis, w)
    return w


def geodesic_angle(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle (radians, (...)) of the rotation R1 R2^T: arccos((trace(R1 R2^T) - 1) / 2), computed
    stably (atan2 of the sine and cosine parts) so small angles stay accurate."""
    M = R1 @ R2.transpose(-1, -2)
    cos = (M.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    v = _axis_part(M)
    sin = torch.linalg.norm(v, dim=-1) / 2
    return torch.atan2(sin, cos)
