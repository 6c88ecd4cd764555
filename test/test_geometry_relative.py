"""Relative poses and scene normalisation."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.geometry import (
    GeometryError,
    camera_center,
    closest_point_to_lines,
    invert_pose,
    look_at,
    make_pose,
    normalize_scene,
    relative_pose,
    so3_exp,
)

SETTINGS = settings(max_examples=20, deadline=None)


def ring_of_cameras(center, radius, n=5, height=0.4):
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eyes = center + np.stack([radius * np.cos(ang), radius * np.sin(ang), np.full(n, height)], 1)
    return np.stack([look_at(e, center) for e in eyes])


def test_relative_pose_hand_case():
    ref = look_at([2.0, 0, 0], [0, 0, 0])
    other = look_at([0, 2.0, 0], [0, 0, 0])
    np.testing.assert_allclose(relative_pose(ref, ref), np.eye(4), atol=1e-12)
    rel = relative_pose(ref, other)
    # the reference camera's frame: x = world +y, y = world -z, z = world -x; the other camera
    # sits at world (0, 2, 0), i.e. at (2, 0, 2) in the reference frame
    np.testing.assert_allclose(camera_center(rel), [2.0, 0.0, 2.0], atol=1e-12)
    # and it looks towards the world origin, which is (0, 0, 2) in the reference frame
    target = rel[:3, :3] @ np.array([0, 0, 2.0]) + rel[:3, 3]
    np.testing.assert_allclose(target[:2], 0, atol=1e-12)


@SETTINGS
@given(st.integers(0, 10_000))
def test_relative_pose_invariant_to_world_frame(seed):
    rng = np.random.default_rng(seed)
    poses = np.stack([make_pose(so3_exp(torch.as_tensor(rng.normal(size=3))).numpy(), rng.normal(size=3))
                      for _ in range(4)])
    G = make_pose(so3_exp(torch.as_tensor(rng.normal(size=3))).numpy(), rng.normal(size=3) * 5)
    moved = poses @ invert_pose(G)  # the same cameras in another world frame
    np.testing.assert_allclose(relative_pose(moved[0], moved), relative_pose(poses[0], poses), atol=1e-9)
    # torch, batched
    out = relative_pose(torch.as_tensor(poses[0]), torch.as_tensor(poses))
    np.testing.assert_allclose(out.numpy(), relative_pose(poses[0], poses), atol=1e-12)


def test_closest_point_to_lines():
    pts = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    # lines parallel to the x, y and z axes through (., 5, 5), (5, ., 5), (5, 5, .)
    c = closest_point_to_lines(pts + [[0, 5, 5], [5, 0, 5], [5, 5, 0]], -pts)
    np.testing.assert_allclose(c, [5.0, 5.0, 5.0], atol=1e-12)
    with pytest.raises(GeometryError, match="parallel"):
        closest_point_to_lines(pts, np.ones((3, 3)))


@pytest.mark.parametrize("scale", [0.3, 1.0, 7.0])
def test_normalize_scene_center(scale):
    center = np.array([0.5, -1.0, 0.2])
    w2cs = ring_of_cameras(center, 2.5)
    w2cs[:, :3, 3] *= scale  # the same scene in other units
    rel, s = normalize_scene(w2cs)  # centre estimated from the optical axes
    np.testing.assert_allclose(rel[0], np.eye(4), atol=1e-9)
    # the first camera is at distance 1 from the scene centre, which it looks straight at
    np.testing.assert_allclose(s * np.hypot(2.5, 0.4) * scale, 1.0, rtol=1e-9)
    c_ref = np.array([0.0, 0.0, 1.0])
    for w in rel[1:]:  # every camera still looks at the (normalised) centre
        p = w[:3, :3] @ c_ref + w[:3, 3]
        np.testing.assert_allclose(p[:2], 0, atol=1e-9)
    rel2, _ = normalize_scene(ring_of_cameras(center, 2.5), scene_center=center)
    np.testing.assert_allclose(rel, rel2, atol=1e-9)


def test_normalize_scene_baseline():
    w2cs = ring_of_cameras(np.zeros(3), 3.0, n=4)
    rel, s = normalize_scene(w2cs, mode="baseline")
    np.testing.assert_allclose(np.linalg.norm(camera_center(rel[1])), 1.0)
    np.testing.assert_allclose(s, 1 / np.linalg.norm(camera_center(w2cs[1]) - camera_center(w2cs[0])))
    # rotations are untouched by the normalisation
    np.testing.assert_allclose(rel[:, :3, :3], relative_pose(w2cs[0], w2cs)[:, :3, :3])


def test_normalize_scene_errors():
    w2c = look_at([2.0, 0, 0], [0, 0, 0])
    with pytest.raises(GeometryError, match=">= 2"):
        normalize_scene(w2c[None])
    with pytest.raises(GeometryError, match=">= 2"):
        normalize_scene(w2c[None], mode="baseline")
    with pytest.raises(GeometryError, match="mode"):
        normalize_scene(np.stack([w2c, w2c]), mode="median")
    with pytest.raises(GeometryError, match="cannot normalise"):
        normalize_scene(np.stack([w2c, w2c]), mode="baseline")
    with pytest.raises(GeometryError, match="empty"):
        normalize_scene(np.zeros((0, 4, 4)))
    with pytest.raises(GeometryError, match="NaN"):
        normalize_scene(np.full((2, 4, 4), np.nan))
