"""Our camera (K, w2c) <-> pybullet's OpenGL view and projection matrices, exactly.

Our convention (gst_ros.geometry): w2c maps world points to OpenCV optical axes (x right,
y down, z forward); K is in pixels with the centre of the top-left pixel at (0, 0), so the image
spans [-0.5, W-0.5] x [-0.5, H-0.5]. pybullet (OpenGL) eye axes are x right, y up, z backward,
and its matrices are column-major 16-float lists. getCameraImage returns rows top first.

Derivation of the projection (X = OpenCV camera point, Z > 0; X_gl = diag(1, -1, -1) X):
    u = fx X/Z + s Y/Z + cx,   x_ndc = 2 u / W - 1
    v = fy Y/Z + cy,           y_ndc = 1 - 2 (v + 1) / H
and w_clip = Z = -Z_gl, which gives the rows of `projection_matrix_from_K` below.
The NDC <-> pixel maps are those of ER_TINY_RENDERER, measured (not the textbook OpenGL
viewport): it samples column u at window x = u and returns window row y as image row H-1-y, so
the centre of pixel (u, v) sits at x_ndc = 2u/W - 1, y_ndc = 1 - 2(v+1)/H. With the textbook
half-pixel map, marker centroids land (+0.5, -0.5) px off; with this one they land within
0.1 px (test/test_sim_projection.py checks it on random cameras).
"""
from __future__ import annotations

import numpy as np

# OpenCV optical axes -> OpenGL eye axes (flip y and z)
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def view_matrix_from_w2c(w2c: np.ndarray) -> list[float]:
    """pybullet viewMatrix (column-major 16 floats) of the world-to-camera 4x4 `w2c`
    (OpenCV optical axes: x right, y down, z forward; X_cam = R X_world + t)."""
    w2c = np.asarray(w2c, dtype=np.float64)
    if w2c.shape != (4, 4) or not np.isfinite(w2c).all():
        raise ValueError(f"w2c must be a finite 4x4 matrix, got shape {w2c.shape}")
    return (CV_TO_GL @ w2c).T.reshape(-1).tolist()


def projection_matrix_from_K(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """4x4 OpenGL projection (row-major numpy) for pixel intrinsics K of a width x height image
    (OpenCV/CameraInfo convention, top-left pixel centre at (0, 0)); depth clipped to
    [near, far] metres along the optical axis."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be a finite 3x3 matrix with positive focal lengths, got {K.tolist()}")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    W, H = float(width), float(height)
    P = np.zeros((4, 4))
    P[0] = [2 * fx / W, -2 * s / W, (W - 2 * cx) / W, 0.0]
    P[1] = [0.0, 2 * fy / H, (2 * cy + 2 - H) / H, 0.0]
    P[2] = [0.0, 0.0, -(far + near) / (far - near), -2 * far * near / (far - near)]
    P[3] = [0.0, 0.0, -1.0, 0.0]
    return P


def projection_list_from_K(K: np.ndarray, width: int, height: int, near: float, far: float) -> list[float]:
    """pybullet projectionMatrix (column-major 16 floats); see projection_matrix_from_K."""
    return projection_matrix_from_K(K, width, height, near, far).T.reshape(-1).tolist()


def depth_from_buffer(buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """pybullet's non-linear depth buffer (values in [0, 1]) -> depth in metres along the
    optical axis (camera z), float32; pixels at the far plane (nothing hit) become inf."""
    d = np.asarray(buffer, dtype=np.float64)
    z = far * near / (far - (far - near) * d)
    z[d >= 1.0] = np.inf
    return z.astype(np.float32)
