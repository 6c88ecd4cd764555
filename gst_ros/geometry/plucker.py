"""Plücker ray maps: a camera as an image of rays, one per pixel centre.

For pixel (u, v) (u = column, v = row, pixel-centre convention of intrinsics.py) of a camera
(K, w2c) the ray has
    d = normalise(R^T K^-1 [u, v, 1])   unit direction in the WORLD frame
    m = o x d                           moment, o = camera centre = -R^T t
(inside the model the world frame is the reference camera's frame). A map stores them as
channels in the order PLUCKER_ORDER = "md": [m_x, m_y, m_z, d_x, d_y, d_z] (the official GST
code's order; RayDiffusion uses [d, m]). split_plucker/join_plucker are the only code that
knows the order. Maps are torch (B, 6, H, W); rows top to bottom, columns left to right.
"""
from __future__ import annotations

import torch

from .conventions import camera_center
from .errors import GeometryError, as_batch, check_intrinsics, check_pose

PLUCKER_ORDER = "md"
PLUCKER_CHANNELS = ("m_x", "m_y", "m_z", "d_x", "d_y", "d_z")


def split_plucker(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, d), each (B, 3, H, W), from Plücker maps (B, 6, H, W) in PLUCKER_ORDER."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[1] != 6:
        shape = tuple(maps.shape) if hasattr(maps, "shape") else type(maps).__name__
        raise GeometryError(f"Plücker maps: expected a torch tensor (B,6,H,W), got {shape}")
    return maps[:, :3], maps[:, 3:]


def join_plucker(m: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Plücker maps (B, 6, H, W) in PLUCKER_ORDER from moments m and directions d (B, 3, H, W)."""
    return torch.cat([m, d], dim=1)


def pixel_grid(height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """(H*W, 3) homogeneous pixel centres [u, v, 1], row-major (index = v * W + u)."""
    if height < 1 or width < 1:
        raise GeometryError(f"map size must be >= 1x1, got {height}x{width}")
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, dtype=dtype)], -1)


def camera_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Unit ray directions (B, H*W, 3) in the CAMERA frame (OpenCV axes) through the pixel
    centres of an H x W image: normalise(K^-1 [u, v, 1]). K: (B, 3, 3) float64 torch."""
    x = pixel_grid(height, width, K.dtype)
    r = torch.einsum("bij,nj->bni", torch.linalg.inv(K), x)
    return r / torch.linalg.norm(r, dim=-1, keepdim=True)


def plucker_map(K, w2c, height: int, width: int, dtype=torch.float32) -> torch.Tensor:
    """Plücker maps (B, 6, H, W) of cameras (K, w2c), channel order PLUCKER_ORDER.

    K: (3,3) or (B,3,3) pixel intrinsics FOR AN H x W IMAGE (scale them with
    crop_resize_intrinsics first); w2c: (4,4) or (B,4,4) world-to-camera, OpenCV axes. numpy
    or torch; a single K or w2c is shared across the batch. Computed in float64, returned as
    `dtype` (float32 by default)."""
    K, _ = as_batch(K, "K", (3, 3))
    w2c, _ = as_batch(w2c, "w2c", (4, 4))
    check_intrinsics(K)
    check_pose(w2c)
    if K.shape[0] != w2c.shape[0]:
        if K.shape[0] == 1:
            K = K.expand(w2c.shape[0], 3, 3)
        elif w2c.shape[0] == 1:
            w2c = w2c.expand(K.shape[0], 4, 4)
        else:
            raise GeometryError(f"batch sizes differ: K {K.shape[0]}, w2c {w2c.shape[0]}")
    B = K.shape[0]
    d = camera_rays(K, height, width) @ w2c[:, :3, :3]  # rows: R^T r  (world frame)
    o = camera_center(w2c)[:, None, :].expand_as(d)
    m = torch.cross(o, d, dim=-1)
    to_map = lambda x: x.transpose(1, 2).reshape(B, 3, height, width)
    return join_plucker(to_map(m), to_map(d)).to(dtype)
