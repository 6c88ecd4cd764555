"""Camera conventions: look_at, quaternions and every dataset/ROS converter against hand-made cases."""
import numpy as np
import pytest
import torch
import transforms3d
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gst_ros.geometry import (
    BODY_FROM_OPTICAL,
    GeometryError,
    blender_from_w2c,
    camera_center,
    camera_to_parent_from_ros_pose,
    colmap_from_w2c,
    invert_pose,
    look_at,
    make_pose,
    matrix_to_quat_wxyz,
    matrix_to_quat_xyzw,
    parse_realestate10k_line,
    project_points,
    pytorch3d_from_w2c,
    quat_wxyz_to_matrix,
    quat_xyzw_to_matrix,
    ros_camera_pose_from_w2c,
    so3_exp,
    w2c_from_blender,
    w2c_from_colmap,
    w2c_from_pytorch3d,
    w2c_from_ros_camera_pose,
)
from gst_ros.geometry.intrinsics import intrinsics_from_fov

SETTINGS = settings(max_examples=25, deadline=None)
vec3 = st.tuples(*[st.floats(-3, 3) for _ in range(3)]).map(np.array)
quat = st.tuples(*[st.floats(-1, 1) for _ in range(4)]).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 0.1)


def assert_same_quat(q1, q2, atol=1e-9):
    """Quaternions q and -q are the same rotation."""
    assert min(np.abs(q1 - q2).max(), np.abs(q1 + q2).max()) < atol, (q1, q2)


def random_pose(rv, t):
    R = so3_exp(torch.as_tensor(rv, dtype=torch.float64)).numpy()
    return make_pose(R, t)


# camera at +x looking at the origin, world z up: right = world +y, down = world -z
EXPECTED_R = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def test_look_at_hand_case():
    w2c = look_at([2.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(w2c[:3, :3], EXPECTED_R, atol=1e-12)
    np.testing.assert_allclose(camera_center(w2c), [2.0, 0.0, 0.0], atol=1e-12)
    K = intrinsics_from_fov(60, 65, 49)
    uv, depth = project_points(K, w2c, np.array([[0.0, 0, 0], [0, 0, 0.5], [0, 0.5, 0]]))
    np.testing.assert_allclose(uv[0], [32.0, 24.0], atol=1e-9)  # target -> principal point
    np.testing.assert_allclose(depth, [2.0, 2.0, 2.0])
    assert uv[1, 1] < 24.0 and abs(uv[1, 0] - 32) < 1e-9  # world up is image up
    assert uv[2, 0] > 32.0 and abs(uv[2, 1] - 24) < 1e-9  # world +y is image right


@SETTINGS
@given(vec3, vec3)
def test_look_at_properties(eye, target):
    assume(np.linalg.norm(eye - target) > 1e-2 and np.linalg.norm(np.cross(target - eye, [0, 0, 1])) > 1e-2)
    w2c = look_at(eye, target)
    np.testing.assert_allclose(camera_center(w2c), eye, atol=1e-9)
    cam_target = w2c[:3, :3] @ target + w2c[:3, 3]
    np.testing.assert_allclose(cam_target[:2], 0, atol=1e-9)
    assert cam_target[2] > 0
    assert abs(w2c[0, 2]) < 1e-9  # camera x (right) is horizontal: no roll
    assert w2c[1, 2] < 0  # camera y (down) points against world up


def test_look_at_degenerate():
    with pytest.raises(GeometryError, match="coincide"):
        look_at([1, 1, 1], [1, 1, 1])
    with pytest.raises(GeometryError, match="parallel"):
        look_at([0, 0, 3], [0, 0, 0])


@SETTINGS
@given(vec3, vec3)
def test_invert_pose_numpy_and_torch(rv, t):
    T = random_pose(rv, t)
    np.testing.assert_allclose(invert_pose(T) @ T, np.eye(4), atol=1e-12)
    Tt = torch.as_tensor(np.stack([T, np.linalg.inv(T)]))
    np.testing.assert_allclose(invert_pose(Tt).numpy(), np.linalg.inv(Tt.numpy()), atol=1e-10)


@SETTINGS
@given(quat)
def test_quaternions_match_transforms3d(q):
    q = q / np.linalg.norm(q)
    R = quat_wxyz_to_matrix(q)
    np.testing.assert_allclose(R, transforms3d.quaternions.quat2mat(q), atol=1e-12)
    back = matrix_to_quat_wxyz(R)
    assert back[0] >= 0
    assert_same_quat(back, q)
    xyzw = matrix_to_quat_xyzw(R)
    np.testing.assert_allclose(xyzw, back[[1, 2, 3, 0]])
    np.testing.assert_allclose(quat_xyzw_to_matrix(xyzw), R, atol=1e-12)


def test_quaternion_bad_norm():
    with pytest.raises(GeometryError, match="norm"):
        quat_wxyz_to_matrix([0.5, 0, 0, 0])
    with pytest.raises(GeometryError, match="NaN"):
        quat_wxyz_to_matrix([np.nan, 0, 0, 1])


def test_blender_hand_case():
    # Blender camera at +x looking at the origin: x right = +y, y up = +z, z backward = +x
    R_bl = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    eye = np.array([2.0, 0, 0])
    RT = np.concatenate([R_bl, (-R_bl @ eye)[:, None]], 1)
    w2c = w2c_from_blender(RT)
    np.testing.assert_allclose(w2c, look_at(eye, [0, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(blender_from_w2c(w2c), RT, atol=1e-12)


def test_pytorch3d_hand_case():
    # PyTorch3D camera at +x looking at the origin: x left = -y, y up = +z, z forward = -x
    R_col = np.array([[0.0, -1, 0], [0, 0, 1], [-1, 0, 0]])
    eye = np.array([2.0, 0, 0])
    R, T = R_col.T, -R_col @ eye  # row-vector convention: X_cam = X_world @ R + T
    w2c = w2c_from_pytorch3d(R, T)
    np.testing.assert_allclose(w2c, look_at(eye, [0, 0, 0]), atol=1e-12)
    R2, T2 = pytorch3d_from_w2c(w2c)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(T2, T, atol=1e-12)


@SETTINGS
@given(vec3, vec3, vec3)
def test_pytorch3d_points_agree(rv, T, X):
    R = so3_exp(torch.as_tensor(rv, dtype=torch.float64)).numpy()
    X_p3d = X @ R + T
    w2c = w2c_from_pytorch3d(R, T)
    X_cv = w2c[:3, :3] @ X + w2c[:3, 3]
    np.testing.assert_allclose(X_cv, X_p3d * [-1, -1, 1], atol=1e-9)


@SETTINGS
@given(quat, vec3)
def test_colmap_round_trip(q, t):
    q = q / np.linalg.norm(q)
    w2c = w2c_from_colmap(q, t)
    np.testing.assert_allclose(w2c[:3, :3], transforms3d.quaternions.quat2mat(q), atol=1e-12)
    np.testing.assert_allclose(w2c[:3, 3], t)
    q2, t2 = colmap_from_w2c(w2c)
    assert_same_quat(q2, q)
    np.testing.assert_allclose(t2, t)


def test_colmap_identity():
    np.testing.assert_allclose(w2c_from_colmap([1, 0, 0, 0], [0, 0, 0]), np.eye(4))


def test_realestate10k_line():
    w2c = look_at([1.0, -2.0, 0.5], [0, 0, 0.2])
    nums = [123456789, 0.5, 0.8, 0.5, 0.5, 0, 0] + list(w2c[:3].reshape(-1))
    ts, K, pose = parse_realestate10k_line(" ".join(f"{v:.17g}" for v in nums), width=640, height=360)
    assert ts == 123456789
    np.testing.assert_allclose(K, [[320, 0, 319.5], [0, 288, 179.5], [0, 0, 1]])
    np.testing.assert_allclose(pose, w2c, atol=1e-12)
    with pytest.raises(GeometryError, match="19 numbers"):
        parse_realestate10k_line("1 2 3", 640, 360)
    bad = nums[:7] + [2.0] + nums[8:]
    with pytest.raises(GeometryError, match="orthonormal"):
        parse_realestate10k_line(" ".join(map(str, bad)), 640, 360)


def test_ros_pose_hand_case():
    # An optical frame at (1, 2, 0.5) looking along world +x: its camera-to-parent rotation has
    # columns right = -y, down = -z, forward = +x, which is BODY_FROM_OPTICAL.
    q_wxyz = transforms3d.quaternions.mat2quat(BODY_FROM_OPTICAL)
    q_xyzw = q_wxyz[[1, 2, 3, 0]]
    position = np.array([1.0, 2.0, 0.5])
    T = camera_to_parent_from_ros_pose(position, q_xyzw)
    np.testing.assert_allclose(T[:3, :3], BODY_FROM_OPTICAL, atol=1e-12)
    w2c = w2c_from_ros_camera_pose(position, q_xyzw)
    np.testing.assert_allclose(w2c, look_at(position, position + [1, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(camera_center(w2c), position, atol=1e-12)
    p2, q2 = ros_camera_pose_from_w2c(w2c)
    np.testing.assert_allclose(p2, position, atol=1e-12)
    assert_same_quat(q2, q_xyzw)


@SETTINGS
@given(quat, vec3)
def test_ros_round_trip(q, p):
    q = q / np.linalg.norm(q)
    w2c = w2c_from_ros_camera_pose(p, q)
    np.testing.assert_allclose(np.linalg.inv(w2c), camera_to_parent_from_ros_pose(p, q), atol=1e-9)
    p2, q2 = ros_camera_pose_from_w2c(w2c)
    np.testing.assert_allclose(p2, p, atol=1e-9)
    assert_same_quat(q2, q)


def test_bad_inputs_raise():
    with pytest.raises(GeometryError, match="orthonormal"):
        make_pose(np.diag([1.0, 2.0, 1.0]), [0, 0, 0])
    with pytest.raises(GeometryError, match="determinant"):
        make_pose(np.diag([1.0, 1.0, -1.0]), [0, 0, 0])
    with pytest.raises(GeometryError, match="shape"):
        w2c_from_blender(np.eye(3))
    with pytest.raises(GeometryError, match="NaN"):
        w2c_from_colmap([1, 0, 0, 0], [0, np.inf, 0])
    assert issubclass(GeometryError, ValueError)


@SETTINGS
@given(vec3, vec3)
def test_blender_and_pytorch3d_round_trips(rv, t):
    w2c = random_pose(rv, t)
    np.testing.assert_allclose(w2c_from_blender(blender_from_w2c(w2c)), w2c, atol=1e-12)
    np.testing.assert_allclose(w2c_from_pytorch3d(*pytorch3d_from_w2c(w2c)), w2c, atol=1e-12)
    # the camera centre is the same in every convention
    R_bl = blender_from_w2c(w2c)
    np.testing.assert_allclose(-R_bl[:, :3].T @ R_bl[:, 3], camera_center(w2c), atol=1e-9)
