"""Pose metrics (evaluation protocols of DESIGN section 3) and the spread of sampled poses.

Inputs are numpy or torch; results are numpy float64 / Python floats. Rotations are w2c
rotation blocks (column vectors, OpenCV axes) unless a function says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import GeometryError, check_rotation
from .rotations import geodesic_angle, rotation_from_covariance, so3_log


def _t(x, name: str, tail: tuple) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    if t.ndim != len(tail) + 1 or tuple(t.shape[1:]) != tail:
        want = ",".join(str(s) for s in tail)
        raise GeometryError(f"{name}: expected shape (N,{want}), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise GeometryError(f"{name}: empty")
    if not bool(torch.isfinite(t).all()):
        raise GeometryError(f"{name}: contains NaN or inf")
    return t


def rotation_error_deg(R_pred, R_gt) -> np.ndarray:
    """Geodesic angle in degrees between rotations (..., 3, 3): arccos((tr(R_pred R_gt^T) - 1) / 2)."""
    a = torch.as_tensor(np.asarray(R_pred) if not isinstance(R_pred, torch.Tensor) else R_pred).double()
    b = torch.as_tensor(np.asarray(R_gt) if not isinstance(R_gt, torch.Tensor) else R_gt).double()
    if a.shape != b.shape or a.shape[-2:] != (3, 3):
        raise GeometryError(
            f"rotation_error_deg: shapes {tuple(a.shape)} and {tuple(b.shape)}, expected (...,3,3)")
    check_rotation(a, "R_pred")
    check_rotation(b, "R_gt")
    return np.degrees(geodesic_angle(a, b).numpy())


def relative_rotation_errors(R_pred, R_gt) -> np.ndarray:
    """Errors (degrees) of the relative rotations over all ordered pairs (i, j), i != j, of N
    cameras: (N*(N-1),), pairs in row-major order of (i, j).

    R_pred, R_gt: (N,3,3) w2c rotations. R_rel_ij = R_j R_i^T (camera i -> camera j); the error is
    arccos((tr(R_rel_gt R_rel_pred^T) - 1) / 2). This equals RayDiffusion's protocol, written
    as R_i^T R_j on PyTorch3D's row-vector (transposed) rotations."""
    P, G = _t(R_pred, "R_pred", (3, 3)), _t(R_gt, "R_gt", (3, 3))
    if P.shape != G.shape:
        raise GeometryError(f"R_pred {tuple(P.shape)} and R_gt {tuple(G.shape)} differ")
    if len(P) < 2:
        raise GeometryError("relative rotation errors need at least 2 cameras")
    check_rotation(P, "R_pred")
    check_rotation(G, "R_gt")
    i, j = torch.nonzero(~torch.eye(len(P), dtype=torch.bool), as_tuple=True)
    rel_p = P[j] @ P[i].transpose(1, 2)
    rel_g = G[j] @ G[i].transpose(1, 2)
    return np.degrees(geodesic_angle(rel_g, rel_p).numpy())


def accuracy_at(errors, thresholds=(15.0, 30.0)) -> dict[float, float]:
    """{threshold: share of errors < threshold} (e.g. rotation errors in degrees)."""
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise GeometryError("accuracy_at: no errors given")
    return {float(t): float((e < t).mean()) for t in thresholds}


def umeyama(src, dst, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R (3,3), t (3,)) minimising sum |dst_i - (s R src_i + t)|^2 (Umeyama 1991).

    src, dst: (N,3) corresponding points, N >= 2. with_scale=False fixes s = 1."""
    x, y = _t(src, "src", (3,)), _t(dst, "dst", (3,))
    if x.shape != y.shape:
        raise GeometryError(f"src {tuple(x.shape)} and dst {tuple(y.shape)} differ")
    if len(x) < 2:
        raise GeometryError("umeyama needs at least 2 points")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    var_x = (xc**2).sum() / len(x)
    if float(var_x) < 1e-24:
        raise GeometryError("umeyama: source points coincide")
    C = yc.T @ xc / len(x)
    R = rotation_from_covariance(C)
    s = float(torch.trace(R.T @ C) / var_x) if with_scale else 1.0
    t = my - s * R @ mx
    return s, R.numpy(), t.numpy()


def camera_center_errors(centers_pred, centers_gt) -> np.ndarray:
    """Per-camera centre error RELATIVE TO SCENE SCALE after aligning the predicted centres
    (N,3) to the true ones with a similarity (Umeyama): |s R c_pred + t - c_gt| / scale, with
    scale = the largest distance of a true centre from the true centres' centroid
    (translation is only known up to scale, hence the similarity)."""
    gt = _t(centers_gt, "centers_gt", (3,)).numpy()
    s, R, t = umeyama(centers_pred, gt)
    aligned = s * np.asarray(centers_pred, dtype=np.float64) @ R.T + t
    scale = np.linalg.norm(gt - gt.mean(0), axis=1).max()
    if scale < 1e-12:
        raise GeometryError("camera_center_errors: true centres coincide (no scene scale)")
    return np.linalg.norm(aligned - gt, axis=1) / scale


def camera_center_accuracy(centers_pred, centers_gt, threshold: float = 0.1) -> float:
    """Share of cameras whose aligned centre error (camera_center_errors) is below `threshold`
    (a fraction of the scene scale; RayDiffusion reports 0.1)."""
    return float((camera_center_errors(centers_pred, centers_gt) < threshold).mean())


@dataclass
class RotationSpread:
    """Mean and dispersion of sampled rotations.

    mean: (3,3) chordal L2 mean projected to SO(3).
    covariance: (3,3) rad^2, second moment of w_i with R_i = Exp(w_i) mean (frame="parent",
        axes of the frame the rotations map INTO) or R_i = mean Exp(w_i) (frame="body").
    mean_deviation_deg, max_deviation_deg: geodesic angle of the samples from the mean."""
    mean: np.ndarray
    covariance: np.ndarray
    mean_deviation_deg: float
    max_deviation_deg: float


def rotation_mean(rotations, weights=None, frame: str = "parent") -> RotationSpread:
    """Chordal L2 mean and spread of S sampled rotations (S,3,3).

    For a ROS PoseWithCovariance of a camera in a reference frame pass the camera-to-reference
    rotations (w2c rotation blocks transposed) with frame="parent": the covariance is then
    about the reference frame's x, y, z axes, as ROS expects."""
    Rs = _t(rotations, "rotations", (3, 3))
    check_rotation(Rs, "rotations")
    w = torch.ones(len(Rs), dtype=torch.float64) if weights is None else _t(
        np.asarray(weights, dtype=np.float64)[:, None], "weights", (1,))[:, 0]
    if len(w) != len(Rs) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise GeometryError("weights: need one non-negative weight per rotation, not all zero")
    w = w / w.sum()
    mean = rotation_from_covariance((w[:, None, None] * Rs).sum(0))
    if frame == "parent":
        v = so3_log(Rs @ mean.T)
    elif frame == "body":
        v = so3_log(mean.T @ Rs)
    else:
        raise GeometryError(f"frame must be 'parent' or 'body', got {frame!r}")
    cov = (w[:, None, None] * v[:, :, None] * v[:, None, :]).sum(0)
    dev = np.degrees(torch.linalg.norm(v, dim=-1).numpy())
    return RotationSpread(mean.numpy(), cov.numpy(), float((w.numpy() * dev).sum()), float(dev.max()))


@dataclass
class TranslationSpread:
    """Mean and dispersion of sampled translations (or camera centres) t_i (S,3).

    mean: (3,) mean vector; covariance: (3,3) of the vectors (units^2, 1/S normalisation).
    direction: (3,) unit mean direction (normalised mean of the unit vectors; scale-free);
    direction_covariance: (3,3) covariance of the unit vectors about `direction`;
    direction_deviation_deg: mean angle between the samples' directions and `direction`."""
    mean: np.ndarray
    covariance: np.ndarray
    direction: np.ndarray
    direction_covariance: np.ndarray
    direction_deviation_deg: float


def translation_spread(vectors) -> TranslationSpread:
    """Mean/covariance of sampled translations and of their directions (translation from
    images is only known up to scale, so the direction is the scale-free part). Vectors of
    length ~0 have no direction and raise GeometryError."""
    v = _t(vectors, "vectors", (3,)).numpy()
    mean = v.mean(0)
    cov = (v - mean).T @ (v - mean) / len(v)
    n = np.linalg.norm(v, axis=1)
    if (n < 1e-12).any():
        raise GeometryError("translation_spread: a vector has zero length (no direction)")
    u = v / n[:, None]
    s = u.mean(0)
    if np.linalg.norm(s) < 1e-9:
        raise GeometryError("translation_spread: directions cancel out (no mean direction)")
    direction = s / np.linalg.norm(s)
    dev = u - direction
    dcov = dev.T @ dev / len(u)
    ang = np.degrees(np.arccos(np.clip(u @ direction, -1.0, 1.0)))
    return TranslationSpread(mean, cov, direction, dcov, float(ang.mean()))
