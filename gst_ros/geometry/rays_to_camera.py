"""From (possibly noisy) Plücker ray maps back to cameras.

Model of a map (see plucker.py): ray of pixel (u, v) has world direction d ~ R^T K^-1 [u, v, 1]
and moment m = o x d, o = camera centre. Everything is solved in float64 (float32 maps are
promoted), vectorised over the batch and the rays (no Python loop over rays).

Known intrinsics K (cameras_from_plucker(maps, K)):
- directions are normalised (d / |d|, and m / |d| so the ray stays the same line; rays with
  |d| ~ 0 are ignored), m is made orthogonal to d;
- centre c: least squares point nearest to all rays, sum w (I - d d^T) c = sum w (I - d d^T) p,
  p = d x m;
- rotation: weighted orthogonal Procrustes (with the det fix) between the identity camera's
  pixel rays r = normalise(K^-1 [u, v, 1]) and the map's directions, d ~ R^T r;
- translation t = -R c (world-to-camera).
Robustness (robust=True): iteratively reweighted least squares. Each iteration re-weights
every ray with a Cauchy weight 1 / (1 + (e / (2.385 s))^2) of its residual e (angle for the
rotation, point-to-ray distance for the centre), s = 1.4826 * median residual (a robust scale,
floored so a perfect map gets uniform weights). The rotation is fitted first; the centre starts
from the least-median-of-squares pick among 3-ray hypotheses drawn from the rays that agree with
the rotation, and its weights are multiplied by the rotation's. Rays whose angle is above 3 s
(and above the floor) are reported as outliers.

Unknown intrinsics (K=None), the RayDiffusion route: d ~ R^T K^-1 x for homogeneous pixel
x, so a homography H = lambda R^T K^-1 maps pixel centres to ray directions. H is fitted by a
Hartley-normalised DLT (constraint d x (H x) = 0) made robust by least-median-of-squares over
random minimal 4-ray samples followed by IRLS. H = Q U (QR) with Q orthogonal and U upper
triangular: Q = R^T and U ~ K^-1, whose diagonal holds 1/fx, 1/fy (the "1/f trap": invert U,
do not read focal lengths off it). Signs are fixed so U has a positive diagonal and det Q = +1;
K = inv(U / U[2,2]) with the skew dropped. Then the known-K route runs with that K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import GeometryError, as_batch, check_intrinsics
from .plucker import camera_rays, pixel_grid, split_plucker
from .rotations import rotation_from_covariance

CAUCHY_C = 2.385  # Cauchy tuning constant (95 % efficiency under Gaussian noise)
MAD_TO_SIGMA = 1.4826
ANGLE_FLOOR = 1e-7  # rad: below this the residual scale is treated as noise-free
PARALLEL_TOL = 1e-10  # min eigenvalue of mean(I - d d^T): below it all rays are parallel


@dataclass
class CameraFit:
    """Cameras recovered from Plücker maps (all torch float64, batch B).

    w2c: (B,4,4) world-to-camera (OpenCV axes) in the maps' world frame (the reference camera's
         frame inside the model; translation up to the maps' scale).
    K: (B,3,3) intrinsics for the map's H x W grid (given, or estimated by the homography route).
    residual: (B,) RMS angle (radians) between the map's ray directions and the fitted camera's,
         over the inlier rays.
    inlier_fraction: (B,) share of valid rays within 3 robust standard deviations of the fit.
    """
    w2c: torch.Tensor
    K: torch.Tensor
    residual: torch.Tensor
    inlier_fraction: torch.Tensor


def _robust_scale(e: torch.Tensor, valid: torch.Tensor, floor) -> torch.Tensor:
    """(B,1) robust standard deviation 1.4826 * median(e) over valid rays, at least `floor`.
    The median is taken over an evenly strided subset of at most ~1024 rays (plenty for a scale)."""
    step = max(1, e.shape[1] // 1024)
    med = torch.where(valid[:, ::step], e[:, ::step], torch.nan).nanmedian(dim=1, keepdim=True).values
    if step > 1 and bool(med.isnan().any()):  # no valid ray in the subset: use them all
        med = torch.where(valid, e, torch.nan).nanmedian(dim=1, keepdim=True).values
    return torch.maximum(MAD_TO_SIGMA * med, torch.as_tensor(floor, dtype=e.dtype))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products over the last axis (size 3)."""
    return torch.einsum("...i,...i->...", a, b)


def _cauchy(e: torch.Tensor, s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return valid / (1 + (e / (CAUCHY_C * s)) ** 2)


def solve_centers(d: torch.Tensor, m: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """(B,3) points nearest (weighted least squares) to the rays (unit d (B,N,3), moment m).

    Solves sum w (I - d d^T) c = sum w p with p = d x m, the ray's point nearest the origin.
    Raises GeometryError when the rays are (nearly) parallel (the centre is undetermined along
    them) or carry no weight."""
    return _solve_centers(d, torch.cross(d, m, dim=-1), w)


def _solve_centers(d: torch.Tensor, p: torch.Tensor, w: torch.Tensor | None,
                   check: bool = True) -> torch.Tensor:
    """solve_centers from the rays' nearest-origin points p; check=False skips the parallel-rays
    test (for IRLS re-solves after a checked first solve)."""
    if w is None:
        w = torch.ones(d.shape[:2], dtype=d.dtype)
    wsum = w.sum(1)
    if bool((wsum <= 0).any()):
        raise GeometryError(f"no valid rays in batch items {torch.nonzero(wsum <= 0).flatten().tolist()}")
    A = torch.eye(3, dtype=d.dtype) * wsum[:, None, None] - (w[..., None] * d).transpose(1, 2) @ d
    b = (w[..., None] * p).sum(1)
    lam_min = torch.linalg.eigvalsh(A / wsum[:, None, None])[:, 0] if check else None
    if check and bool((lam_min < PARALLEL_TOL).any()):
        bad = torch.nonzero(lam_min < PARALLEL_TOL).flatten().tolist()
        raise GeometryError(f"rays are all parallel in batch items {bad}: the camera centre is undetermined")
    return torch.linalg.solve(A, b)


def _chord(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| for unit vectors: 2 sin(angle / 2), the angle's cheap monotone stand-in."""
    return torch.sqrt((2 - 2 * _dot(a, b)).clamp_min(0))


def _ray_angles(d: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Angles (B,N) between unit vectors d and pred (both (B,N,3)), stable for small angles."""
    return torch.atan2(torch.linalg.norm(torch.cross(d, pred, dim=-1), dim=-1), _dot(d, pred))


def _prepare(maps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(d, m, valid) flattened (B,N,3)/(B,N) with unit d and m orthogonal to d, plus H, W."""
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu()
    m, d = split_plucker(maps)
    B, _, H, W = maps.shape
    if B == 0 or H * W == 0:
        raise GeometryError(f"Plücker maps: empty input of shape {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise GeometryError("Plücker maps: contain NaN or inf")
    d = d.to(torch.float64).flatten(2).transpose(1, 2)
    m = m.to(torch.float64).flatten(2).transpose(1, 2)
    norm = torch.linalg.norm(d, dim=-1, keepdim=True)
    valid = norm[..., 0] > 1e-6 * norm.amax(dim=1, keepdim=True)[..., 0].clamp_min(1e-30)
    n_valid = valid.sum(1)
    if bool((n_valid < 4).any()):
        raise GeometryError(f"batch items {torch.nonzero(n_valid < 4).flatten().tolist()} have fewer than "
                            "4 rays with a non-zero direction")
    norm = torch.where(valid[..., None], norm, torch.ones_like(norm))
    d, m = d / norm, m / norm
    m = m - _dot(m, d)[..., None] * d
    return d, m, valid.to(torch.float64), H, W


def _center_hypotheses(d, p, w, samples: int, gen: torch.Generator) -> torch.Tensor:
    """(B, samples, 3) candidate centres, each the least-squares point of 3 rays drawn with
    probability w (a small ridge keeps near-parallel draws finite; they score badly)."""
    B, N = w.shape
    idx = torch.multinomial(w, samples * 3, replacement=True, generator=gen)
    idx = idx[..., None].expand(B, samples * 3, 3)
    ds = torch.gather(d, 1, idx).reshape(B, samples, 3, 3)
    ps = torch.gather(p, 1, idx).reshape(B, samples, 3, 3)
    A = (3 + 1e-9) * torch.eye(3, dtype=d.dtype) - ds.transpose(-1, -2) @ ds
    return torch.linalg.solve(A, ps.sum(2))


def _ray_distances(c: torch.Tensor, d: torch.Tensor, p: torch.Tensor, pp: torch.Tensor) -> torch.Tensor:
    """Distances (B, S, N) from points c (B, S, 3) to the rays (unit d, nearest-origin point p,
    (B, N, 3); pp = |p|^2 (B, N)): |c - p|^2 - ((c - p) . d)^2, with p . d = 0."""
    sq = _dot(c, c)[..., None] - 2 * c @ p.transpose(1, 2) + pp[:, None] - (c @ d.transpose(1, 2)) ** 2
    return sq.clamp_min(0).sqrt()


def _fit_known_k(d, m, valid, K, H, W, robust: bool, iterations: int, seed: int):
    """Rotation (B,3,3) [w2c block], centre (B,3) and per-ray angle residual (B,N).

    Rotation first (IRLS on ray angles), then the centre: least median of squares over 3-ray
    samples drawn among the angularly consistent rays, then IRLS on point-to-ray distance with
    weights multiplied by the rotation's weights."""
    r = camera_rays(K, H, W)
    p = torch.cross(d, m, dim=-1)
    pp = _dot(p, p)
    vb = valid.bool()
    w_r = valid
    for _ in range(iterations if robust else 1):
        Rt = rotation_from_covariance((w_r[..., None] * d).transpose(1, 2) @ r)  # d ~ R^T r
        if robust:
            e = _chord(d, r @ Rt.transpose(1, 2))
            w_r = _cauchy(e, _robust_scale(e, vb, ANGLE_FLOOR), valid)
    e_ang = _ray_angles(d, r @ Rt.transpose(1, 2))
    if not robust:
        return Rt.transpose(1, 2), _solve_centers(d, p, valid), e_ang
    # distance floor relative to the scene: rays' distance from the origin (|p|) sets the scale
    dist_floor = ANGLE_FLOOR * pp.amax(1, keepdim=True).sqrt().clamp_min(1.0)
    gen = torch.Generator().manual_seed(seed)
    hyp = torch.cat([_solve_centers(d, p, w_r)[:, None], _center_hypotheses(d, p, w_r, 32, gen)], 1)
    sub = torch.linspace(0, d.shape[1] - 1, min(d.shape[1], 96)).long()
    e = torch.where(vb[:, None, sub], _ray_distances(hyp, d[:, sub], p[:, sub], pp[:, sub]), torch.inf)
    c = hyp[torch.arange(len(hyp)), e.median(-1).values.argmin(1)]
    for _ in range(iterations):
        e_dist = _ray_distances(c[:, None], d, p, pp)[:, 0]
        w_c = _cauchy(e_dist, _robust_scale(e_dist, vb, dist_floor), valid) * w_r
        c = _solve_centers(d, p, w_c, check=False)
    return Rt.transpose(1, 2), c, e_ang


def _dlt_normal_matrix(w: torch.Tensor, d: torch.Tensor, x: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """(..., 9, 9) sum_i w_i A_i^T A_i for the DLT rows A_i = [d_i]_x (I kron x_i^T) of d x (H x) = 0,
    h = H row-major. For unit d, A^T A = (I - d d^T) kron (x x^T) = I kron (x x^T) - g g^T with
    g = d kron x. w (..., N), d (..., N, 3), x (..., N, 3), xx = x x^T flattened (..., N, 9)."""
    g = (d[..., :, None] * x[..., None, :]).flatten(-2)
    S = (w[..., None, :] @ xx).reshape(*w.shape[:-1], 3, 3)  # sum w x x^T
    return torch.kron(torch.eye(3, dtype=d.dtype), S) - (g * w[..., None]).transpose(-1, -2) @ g


def _null_homography(M: torch.Tensor) -> torch.Tensor:
    """Unit-norm h minimising h^T M h, as (..., 3, 3)."""
    return torch.linalg.eigh(M)[1][..., 0].reshape(*M.shape[:-2], 3, 3)


def _homography_residual(Hm: torch.Tensor, d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Chord between d (..., N, 3) and +-normalise(H x), whichever sign is closer: a residual
    blind to the (arbitrary) sign of H."""
    y = x @ Hm.transpose(-1, -2)
    cos = _dot(d, y).abs() / _dot(y, y).sqrt().clamp_min(1e-30)
    return torch.sqrt((2 - 2 * cos).clamp_min(0))


def fit_ray_homography(d, valid, H: int, W: int, robust: bool = True, samples: int = 64,
                       iterations: int = 6, seed: int = 0) -> torch.Tensor:
    """Homographies (B,3,3) with d ~ Hm [u, v, 1] for unit world ray directions d (B,N,3) at the
    pixel centres of an H x W grid (row-major), valid (B,N) 0/1. Hartley-normalised DLT; robust:
    least median of squares over `samples` random 4-ray hypotheses (scored on <= 128 rays),
    then Cauchy IRLS on the ray angle (as a chord)."""
    x_pix = pixel_grid(H, W)
    mean = x_pix[:, :2].mean(0)
    s = np.sqrt(2) / torch.linalg.norm(x_pix[:, :2] - mean, dim=-1).mean().clamp_min(1e-12)
    T = torch.tensor([[s, 0, -s * mean[0]], [0, s, -s * mean[1]], [0, 0, 1]], dtype=torch.float64)
    x = x_pix @ T.T
    xx = (x[:, :, None] * x[:, None, :]).flatten(-2)
    B, N = d.shape[:2]
    Hn = _null_homography(_dlt_normal_matrix(valid, d, x, xx))
    if robust:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(valid, samples * 4, replacement=True, generator=gen)
        ds = torch.gather(d, 1, idx[..., None].expand(B, samples * 4, 3)).reshape(B, samples, 4, 3)
        ones = torch.ones(B, samples, 4, dtype=d.dtype)
        hyp = _null_homography(_dlt_normal_matrix(ones, ds, x[idx].reshape(B, samples, 4, 3),
                                                   xx[idx].reshape(B, samples, 4, 9)))
        hyp = torch.cat([Hn[:, None], hyp], 1)
        sub = torch.linspace(0, N - 1, min(N, 128)).long()
        e = _homography_residual(hyp, d[:, None, sub], x[sub])
        e = torch.where(valid[:, None, sub].bool(), e, torch.inf)
        Hn = hyp[torch.arange(B), e.median(-1).values.argmin(1)]
        vb = valid.bool()
        for _ in range(iterations):
            e = _homography_residual(Hn, d, x)
            w = _cauchy(e, _robust_scale(e, vb, ANGLE_FLOOR), valid)
            Hn = _null_homography(_dlt_normal_matrix(w, d, x, xx))
    return Hn @ T


def intrinsics_from_homography(Hm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (B,3,3), Rt (B,3,3)) from Hm = lambda R^T K^-1 (any sign/scale lambda): QR gives
    Q = R^T (camera-to-world rotation) and U ~ K^-1 (diagonal 1/fx, 1/fy, 1); skew is dropped.
    Raises GeometryError if the recovered focal length is not positive and finite."""
    Q, U = torch.linalg.qr(Hm)
    sgn = torch.where(U.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(Hm.dtype)
    Q, U = Q * sgn[:, None, :], U * sgn[:, :, None]
    flip = torch.where(torch.linalg.det(Q) < 0, -1.0, 1.0).to(Hm.dtype)[:, None, None]
    Q, U = Q * flip, U * flip
    Kinv = U / U[:, 2:3, 2:3]
    K = torch.linalg.inv(Kinv)
    K[:, 0, 1] = 0.0
    K[:, 1, 0] = K[:, 2, 0] = K[:, 2, 1] = 0.0
    K[:, 2, 2] = 1.0
    f = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)
    bad = ~torch.isfinite(f).all(-1) | (f <= 0).any(-1)
    if bool(bad.any()):
        raise GeometryError(f"homography route: no valid focal length for batch items "
                            f"{torch.nonzero(bad).flatten().tolist()} (degenerate or inconsistent rays)")
    return K, Q


def cameras_from_plucker(maps, K=None, *, robust: bool = True, iterations: int = 6,
                         seed: int = 0) -> CameraFit:
    """Cameras (w2c, K) that best explain Plücker maps (B,6,H,W) (PLUCKER_ORDER, torch or numpy).

    K: None (estimate focal length and principal point by the homography route), or (3,3) /
    (B,3,3) intrinsics for the map's H x W grid. robust: IRLS against outlier rays (and
    LMedS+IRLS for the homography); robust=False is plain least squares. Computation is
    float64; a noise-free float64 map gives the camera to ~1e-12. Translation is in the maps'
    units (up to scale). Raises GeometryError on bad shapes, NaN/inf, empty batches, parallel
    rays or a non-positive focal length."""
    d, m, valid, H, W = _prepare(maps)
    B = d.shape[0]
    if K is None:
        K, _ = intrinsics_from_homography(fit_ray_homography(d, valid, H, W, robust=robust, seed=seed))
    else:
        K, _ = as_batch(K, "K", (3, 3))
        check_intrinsics(K)
        if K.shape[0] == 1:
            K = K.expand(B, 3, 3)
        elif K.shape[0] != B:
            raise GeometryError(f"K batch {K.shape[0]} does not match maps batch {B}")
        K = K.contiguous()
    R, c, e_ang = _fit_known_k(d, m, valid, K, H, W, robust, iterations, seed)
    w2c = torch.eye(4, dtype=torch.float64).repeat(B, 1, 1)
    w2c[:, :3, :3] = R
    w2c[:, :3, 3] = -(R @ c[..., None])[..., 0]
    vb = valid.bool()
    inlier = vb & (e_ang <= torch.maximum(3 * _robust_scale(e_ang, vb, ANGLE_FLOOR),
                                          torch.tensor(10 * ANGLE_FLOOR)))
    n_in = inlier.sum(1).clamp_min(1)
    residual = torch.sqrt(torch.where(inlier, e_ang**2, 0.0).sum(1) / n_in)
    return CameraFit(w2c=w2c, K=K, residual=residual, inlier_fraction=inlier.sum(1) / valid.sum(1))
