"""GeometryError and the input checks every geometry function runs before doing maths.

Each check raises GeometryError with a message that names the argument and the problem
(shape, NaN/inf, non-orthonormal rotation, non-positive focal length, empty batch), so bad
input fails at the boundary instead of producing a silently wrong camera.
"""
from __future__ import annotations

import numpy as np
import torch


class GeometryError(ValueError):
    """Degenerate or malformed geometric input (wrong shape, NaN/inf, not a rotation, ...)."""


ROTATION_TOL = 1e-4  # max |R^T R - I| entry and |det R - 1| accepted as a rotation


def as_array(x, name: str, shape: tuple, dtype=np.float64) -> np.ndarray:
    """numpy float64 copy of `x` with exactly `shape` (None = any size); finite values only."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.array(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise GeometryError(f"{name}: not numeric ({e})") from e
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "x".join("N" if s is None else str(s) for s in shape) or "scalar"
        raise GeometryError(f"{name}: expected shape ({want}), got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise GeometryError(f"{name}: contains NaN or inf")
    return a


def as_batch(x, name: str, tail: tuple, dtype=torch.float64) -> tuple[torch.Tensor, bool]:
    """(B, *tail) CPU torch tensor of `dtype` from a single (*tail) or batched (B, *tail) input
    (numpy or torch, any device); also returns whether the input was batched. Rejects empty
    batches and NaN/inf. (Geometry runs on the CPU in float64: it is small and needs precision.)"""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().to("cpu", dtype)
    if t.shape == tail:
        t, batched = t.unsqueeze(0), False
    elif t.ndim == len(tail) + 1 and tuple(t.shape[1:]) == tail:
        batched = True
    else:
        want = "x".join(str(s) for s in tail)
        raise GeometryError(f"{name}: expected shape ({want}) or (B,{want}), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise GeometryError(f"{name}: empty batch")
    if not torch.isfinite(t).all():
        raise GeometryError(f"{name}: contains NaN or inf")
    return t, batched


def check_rotation(R, name: str = "rotation", tol: float = ROTATION_TOL) -> None:
    """Raise unless every (..., 3, 3) matrix in R is orthonormal with determinant +1."""
    R = torch.as_tensor(np.asarray(R) if not isinstance(R, torch.Tensor) else R).to(torch.float64)
    eye = torch.eye(3, dtype=R.dtype)
    ortho_err = (R.transpose(-1, -2) @ R - eye).abs().amax(dim=(-1, -2))
    det = torch.linalg.det(R)
    if bool((ortho_err > tol).any()):
        raise GeometryError(f"{name}: not orthonormal (max |R^T R - I| = {float(ortho_err.max()):.2e})")
    if bool(((det - 1).abs() > tol).any()):
        raise GeometryError(f"{name}: determinant {float(det.min()):.4f}, expected +1 (a reflection?)")


def check_pose(w2c, name: str = "w2c") -> None:
    """Raise unless every (..., 4, 4) matrix is rigid: rotation block in SO(3), last row 0 0 0 1."""
    T = torch.as_tensor(np.asarray(w2c) if not isinstance(w2c, torch.Tensor) else w2c).to(torch.float64)
    last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype)
    if bool(((T[..., 3, :] - last).abs() > 1e-9).any()):
        raise GeometryError(f"{name}: last row must be [0, 0, 0, 1]")
    check_rotation(T[..., :3, :3], f"{name} rotation block")


def check_intrinsics(K, name: str = "K") -> None:
    """Raise unless every (..., 3, 3) K has finite positive focal lengths and last row 0 0 1."""
    K = torch.as_tensor(np.asarray(K) if not isinstance(K, torch.Tensor) else K).to(torch.float64)
    if not bool(torch.isfinite(K).all()):
        raise GeometryError(f"{name}: contains NaN or inf")
    f = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)
    if bool((f <= 0).any()):
        raise GeometryError(f"{name}: focal length must be > 0, got fx/fy min {float(f.min())}")
    last = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype)
    if bool(((K[..., 2, :] - last).abs() > 1e-9).any()) or bool((K[..., 1, 0].abs() > 1e-9).any()):
        raise GeometryError(f"{name}: not an upper-triangular intrinsics matrix with last row [0, 0, 1]")
