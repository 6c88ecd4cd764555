"""Baselines for relative pose, run on the same pairs as the model.

- classical: OpenCV features (SIFT, ORB when SIFT is unavailable or finds too little) + ratio
  test + essential matrix with RANSAC (MAGSAC++) + recoverPose;
- identity: always predicts "the target camera is the observation camera";
- chance: a uniformly random rotation; its accuracy has a closed form (chance_rotation_accuracy).

Every pose returned is the target camera relative to the observation camera, as a world-to-camera
4x4 in OpenCV axes (x right, y down, z forward) with the observation as the world: X_target =
R X_obs + t. That is gst_ros.geometry.relative_pose(w2c_obs, w2c_target). Translation from the
essential matrix has unit norm (scale is unobservable from two views).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_MATCHES = 8
# MAGSAC++ (a RANSAC variant in OpenCV >= 4.5) was clearly more accurate than plain RANSAC on the
# synthetic textured pairs of the tests (about 1 degree vs 2-6 degrees); plain RANSAC otherwise.
ROBUST_METHOD = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)


@dataclass
class BaselinePose:
    """rel_w2c: (4,4) float64 target-from-observation pose; ok: False when the method failed
    (then rel_w2c is the identity); matches / inliers: counts; method: detector used."""

    rel_w2c: np.ndarray
    ok: bool
    matches: int = 0
    inliers: int = 0
    method: str = ""


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"images must be (H,W) or (H,W,3) RGB, got {image.shape}")


def _detector(name: str):
    if name == "sift":
        return cv2.SIFT_create(nfeatures=4000), cv2.NORM_L2
    if name == "orb":
        return cv2.ORB_create(nfeatures=4000), cv2.NORM_HAMMING
    raise ValueError(f"feature detector must be 'sift' or 'orb', got {name!r}")


def match_features(img_a: np.ndarray, img_b: np.ndarray, detector: str = "sift",
                   ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Matched pixel coordinates (M,2) in each image ((u, v) = (column, row), OpenCV convention),
    after Lowe's ratio test. Empty arrays when an image has no features."""
    det, norm = _detector(detector)
    ka, da = det.detectAndCompute(_gray(img_a), None)
    kb, db = det.detectAndCompute(_gray(img_b), None)
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    knn = cv2.BFMatcher(norm).knnMatch(da, db, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    pa = np.array([ka[m.queryIdx].pt for m in good], dtype=np.float64).reshape(-1, 2)
    pb = np.array([kb[m.trainIdx].pt for m in good], dtype=np.float64).reshape(-1, 2)
    return pa, pb


def _to_camera(points: np.ndarray, K_from: np.ndarray, K_to: np.ndarray) -> np.ndarray:
    """Pixels (N,2) of a camera with intrinsics K_from -> the pixels the same rays hit in a camera
    with K_to (same orientation): K_to K_from^-1 [u v 1]."""
    K_from, K_to = (np.asarray(k, dtype=np.float64) for k in (K_from, K_to))
    if K_from.shape != (3, 3) or K_to.shape != (3, 3):
        raise ValueError(f"K must be (3,3), got {K_from.shape} and {K_to.shape}")
    h = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    n = h @ (K_to @ np.linalg.inv(K_from)).T
    return n[:, :2] / n[:, 2:]


def essential_matrix_pose(img_obs: np.ndarray, img_target: np.ndarray, K_obs, K_target=None,
                          detector: str = "sift", ransac_px: float = 1.0) -> BaselinePose:
    """Relative pose of the target camera w.r.t. the observation camera from two images.

    K_obs, K_target: (3,3) pixel intrinsics (OpenCV convention; K_target defaults to K_obs).
    Tries `detector` and falls back to ORB when too few matches survive. Returns BaselinePose
    (identity with ok=False when no pose could be estimated)."""
    K_obs = np.asarray(K_obs, dtype=np.float64)
    K_target = K_obs if K_target is None else np.asarray(K_target, dtype=np.float64)
    order = [detector] + (["orb"] if detector != "orb" else [])
    best = BaselinePose(np.eye(4), ok=False)
    for det in order:
        pa, pb = match_features(img_obs, img_target, det)
        if len(pa) < MIN_MATCHES:
            best.matches = max(best.matches, len(pa))
            continue
        pb_obs = _to_camera(pb, K_target, K_obs)  # both point sets in K_obs pixels
        E, mask = cv2.findEssentialMat(pa, pb_obs, K_obs, method=ROBUST_METHOD, prob=0.999,
                                       threshold=ransac_px)
        if E is None or E.shape != (3, 3):  # several solutions come stacked (3k,3): keep the first
            if E is None or E.shape[0] < 3:
                continue
            E = E[:3]
        inliers, R, t, _ = cv2.recoverPose(E, pa, pb_obs, K_obs, mask=mask)
        if inliers < MIN_MATCHES // 2:
            continue
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t.ravel()
        return BaselinePose(T, ok=True, matches=len(pa), inliers=int(inliers), method=det)
    return best


def identity_pose() -> np.ndarray:
    """The constant-identity baseline: (4,4) identity target-from-observation pose."""
    return np.eye(4)


def chance_rotation_accuracy(threshold_deg: float) -> float:
    """Share of uniformly random rotations whose angle is below the threshold:
    P(angle < a) = (a - sin a) / pi for the Haar measure on SO(3)."""
    a = np.deg2rad(float(threshold_deg))
    if not 0 <= a <= np.pi:
        raise ValueError(f"threshold must lie in [0, 180] degrees, got {threshold_deg}")
    return float((a - np.sin(a)) / np.pi)
