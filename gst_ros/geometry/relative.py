"""Cameras relative to a reference camera, and scene-scale normalisation.

Inside the model the reference (observed) camera is the identity and every other camera is
expressed in its frame (OpenCV axes, world-to-camera; see conventions.py). From images alone
translation is only known UP TO SCALE: the model's scenes are normalised (below), and a
caller that needs metric units must multiply translations/centres by a scale it knows.
"""
from __future__ import annotations

import numpy as np
import torch

from .conventions import camera_center, invert_pose
from .errors import GeometryError, as_array, check_pose


def relative_pose(w2c_ref, w2c):
    """w2c @ inv(w2c_ref): camera(s) `w2c` expressed in the reference camera's frame.

    The reference itself becomes the identity. Both world-to-camera, OpenCV axes; (...,4,4)
    numpy or torch (broadcasting), returned in the type of `w2c`."""
    if isinstance(w2c, torch.Tensor):
        ref = torch.as_tensor(w2c_ref, dtype=w2c.dtype)
    else:
        ref = np.asarray(w2c_ref, dtype=np.float64)
    check_pose(ref, "w2c_ref")
    check_pose(w2c, "w2c")
    return w2c @ invert_pose(ref)


def closest_point_to_lines(points, directions, weights=None) -> np.ndarray:
    """Least-squares point (3,) nearest to lines through `points` (N,3) along `directions`
    (N,3) (normalised here): solves sum w (I - d d^T) x = sum w (I - d d^T) p.

    Raises GeometryError if the lines are (nearly) parallel: the point is then undetermined.
    (The batched torch solver used for ray maps is rays_to_camera.solve_centers.)"""
    from .rays_to_camera import solve_centers

    p = torch.as_tensor(as_array(points, "points", (None, 3)))[None]
    d = torch.as_tensor(as_array(directions, "directions", (None, 3)))[None]
    if p.shape != d.shape:
        raise GeometryError(f"points {tuple(p.shape[1:])} and directions {tuple(d.shape[1:])} differ")
    w = None if weights is None else torch.as_tensor(as_array(weights, "weights", (p.shape[1],)))[None]
    n = torch.linalg.norm(d, dim=-1, keepdim=True)
    if bool((n < 1e-12).any()):
        raise GeometryError("directions: zero-length direction")
    d = d / n
    moments = torch.cross(p, d, dim=-1)
    return solve_centers(d, moments, w)[0].numpy()


def normalize_scene(w2cs, mode: str = "center", scene_center=None) -> tuple[np.ndarray, float]:
    """(relative w2cs (N,4,4), scale): cameras relative to the first one, scale-normalised.

    The first camera becomes the identity. Then translations are multiplied by `scale`:
    - mode "center": so that the first camera's distance to the scene centre is 1
      (RayDiffusion). `scene_center` is a world point (3,); if None, the point closest to all
      optical axes (needs >= 2 non-parallel cameras).
    - mode "baseline": so that the distance between the first and second camera centres is 1
      (for scenes without a centre; needs >= 2 cameras).
    Metric size is lost: translation is known only up to this scale. To go back to the input
    units divide translations (and centres) by `scale`."""
    w2cs = as_array(w2cs, "w2cs", (None, 4, 4))
    if len(w2cs) == 0:
        raise GeometryError("w2cs: empty batch")
    check_pose(w2cs, "w2cs")
    rel = relative_pose(w2cs[0], w2cs)
    if mode == "center":
        if scene_center is None:
            if len(w2cs) < 2:
                raise GeometryError("normalize_scene: estimating the scene centre needs >= 2 cameras")
            # optical axis of each camera: through its centre along its +z axis (3rd row of R)
            scene_center = closest_point_to_lines(camera_center(w2cs), w2cs[:, 2, :3])
        c = as_array(scene_center, "scene_center", (3,))
        dist = np.linalg.norm(w2cs[0, :3, :3] @ c + w2cs[0, :3, 3])
    elif mode == "baseline":
        if len(w2cs) < 2:
            raise GeometryError("normalize_scene: mode 'baseline' needs >= 2 cameras")
        dist = np.linalg.norm(camera_center(rel[1]))
    else:
        raise GeometryError(f"normalize_scene: unknown mode {mode!r}; expected 'center' or 'baseline'")
    if dist < 1e-9:
        raise GeometryError(f"normalize_scene: reference distance is {dist:.2e}; cannot normalise scale")
    scale = 1.0 / dist
    rel[:, :3, 3] *= scale
    return rel, scale
