"""THE camera convention of gst_ros, stated once, and converters from every other one we read.

Internal convention (everything in gst_ros speaks it):
- A pose is a 4x4 world-to-camera matrix `w2c`: X_cam = R @ X_world + t (column vectors).
- Camera axes are OpenCV / ROS REP 103 optical axes: x right, y down, z forward (into the scene).
- Camera centre in the world: C = -R^T t. Units are those of the world (metres for ROS; the
  model's scenes are normalised, see relative.py).
- numpy float64 (4,4) for a single camera; torch (B,4,4) where batched. Every helper here
  accepts numpy or torch and (...,4,4) leading dimensions unless it says otherwise.

Other conventions, converted here and nowhere else:
- Blender (Zero-1-to-3 Objaverse `.npy`): 3x4 world-to-camera [R|t] with camera axes x right,
  y up, z backward (the camera looks along -z). OpenCV = diag(1,-1,-1) * Blender camera axes.
- PyTorch3D (CO3D `viewpoint.R`, `viewpoint.T`): row vectors, X_cam = X_world @ R + T; camera
  axes x left, y up, z forward. OpenCV = diag(-1,-1,1) * PyTorch3D camera axes.
- COLMAP (MVImgNet): qvec (w, x, y, z) + tvec, world-to-camera, OpenCV axes already.
- RealEstate10K: 19 numbers per frame; the 12 pose numbers are a row-major 3x4 world-to-camera
  [R|t] in OpenCV axes (intrinsics are normalised by the image size, see intrinsics.py).
- ROS geometry_msgs: position (x, y, z) + orientation quaternion in (x, y, z, w) order. A ROS
  pose/transform of a camera frame is CAMERA-TO-PARENT (it maps camera coordinates into the
  parent frame): the inverse of w2c. Helper names say which of the two they take or return.
  ROS optical frames (`*_optical_frame`) use our axes; ROS body frames (x forward, y left,
  z up) differ by BODY_FROM_OPTICAL.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import GeometryError, as_array, check_pose, check_rotation

# OpenCV optical axes <- other camera axes (left-multiply the camera coordinates)
OPENCV_FROM_BLENDER = np.diag([1.0, -1.0, -1.0])
OPENCV_FROM_PYTORCH3D = np.diag([-1.0, -1.0, 1.0])
# Columns are the optical axes (right, down, forward) written in a REP 103 body frame
# (x forward, y left, z up): X_body = BODY_FROM_OPTICAL @ X_optical.
BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


# In a normalised scene (gst_ros.geometry.normalize_scene, mode "center") the reference camera is
# at distance 1 from the scene centre and, when it looks at it, the centre lies on its optical
# axis: (0, 0, 1) in the reference camera's optical frame.
SCENE_CENTER_REF = np.array([0.0, 0.0, 1.0])


def center_facing_scene(R_w2c, distance=1.0):
    """Camera centre(s) (..., 3) in the reference frame (OpenCV axes, unit scene scale) of cameras
    with rotation(s) R_w2c (..., 3, 3) whose optical axis passes through the scene centre
    SCENE_CENTER_REF at `distance` from it: C = SCENE_CENTER_REF - distance * (third row of R_w2c,
    the optical axis in the reference frame). The translation that a rotation alone implies for an
    object-centric scene, where every camera looks at the scene centre. numpy or torch like R_w2c."""
    axis = R_w2c[..., 2, :]
    if isinstance(axis, torch.Tensor):
        return torch.as_tensor(SCENE_CENTER_REF, dtype=axis.dtype, device=axis.device) - distance * axis
    return SCENE_CENTER_REF - distance * np.asarray(axis, dtype=np.float64)


def _transpose(x):
    return x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)


def make_pose(R, t) -> np.ndarray:
    """4x4 rigid transform from rotation R (3,3) and translation t (3,) (numpy float64).

    Used for any rigid transform; for a w2c it means X_cam = R X_world + t. R must be a rotation."""
    R = as_array(R, "R", (3, 3))
    t = as_array(t, "t", (3,))
    check_rotation(R, "R")
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def invert_pose(T):
    """Inverse of rigid transform(s) T (...,4,4), numpy or torch: [R|t]^-1 = [R^T | -R^T t].

    w2c <-> c2w (camera-to-world) both ways. Exact for rigid transforms (no general inverse)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = _transpose(R)
    out = T.clone() if isinstance(T, torch.Tensor) else np.array(T, dtype=np.float64)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    return out


def camera_center(w2c):
    """Camera centre(s) C = -R^T t in world coordinates from world-to-camera w2c (...,4,4).

    Returns (...,3), numpy or torch like the input."""
    R, t = w2c[..., :3, :3], w2c[..., :3, 3:]
    return (-_transpose(R) @ t)[..., 0]


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera (4,4) float64 of a camera at `eye` looking at `target` (world points).

    OpenCV axes: camera z points from eye to target; camera -y (image up) is as close to the
    world vector `up` as possible; x = right. Raises GeometryError if eye == target or the
    viewing direction is parallel to `up`."""
    eye = as_array(eye, "eye", (3,))
    target = as_array(target, "target", (3,))
    up = as_array(up, "up", (3,))
    z = target - eye
    if np.linalg.norm(z) < 1e-12:
        raise GeometryError("look_at: eye and target coincide")
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9 * max(1.0, np.linalg.norm(up)):
        raise GeometryError("look_at: viewing direction is parallel to `up` (or up is zero)")
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    return make_pose(R, -R @ eye)


# ----------------------------------------------------------------------------- quaternions


def quat_wxyz_to_matrix(q) -> np.ndarray:
    """Rotation matrix (3,3) from a unit quaternion q = (w, x, y, z) (Hamilton, COLMAP order).

    q is normalised first; raises GeometryError if its norm is far from 1 (|norm-1| > 1e-2)."""
    q = as_array(q, "quaternion", (4,))
    n = np.linalg.norm(q)
    if abs(n - 1.0) > 1e-2:
        raise GeometryError(f"quaternion norm {n:.4f} is not 1: not a rotation")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat_wxyz(R) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of rotation matrix R (3,3) (Shepperd's method)."""
    R = as_array(R, "R", (3, 3))
    check_rotation(R, "R")
    tr = np.trace(R)
    cands = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    k = int(np.argmax(cands))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def quat_xyzw_to_matrix(q) -> np.ndarray:
    """Rotation matrix (3,3) from a ROS-order quaternion (x, y, z, w)."""
    q = as_array(q, "quaternion", (4,))
    return quat_wxyz_to_matrix(q[[3, 0, 1, 2]])


def matrix_to_quat_xyzw(R) -> np.ndarray:
    """ROS-order quaternion (x, y, z, w), w >= 0, of rotation matrix R (3,3)."""
    return matrix_to_quat_wxyz(R)[[1, 2, 3, 0]]


# ----------------------------------------------------------------------------- dataset conventions


def w2c_from_blender(RT) -> np.ndarray:
    """OpenCV w2c (4,4) from a Blender world-to-camera [R|t] (3,4) or (4,4) (Zero-1-to-3 `.npy`).

    Blender camera axes: x right, y up, looking along -z. The world frame is unchanged."""
    RT = as_array(RT, "blender RT", (None, 4))
    if RT.shape[0] not in (3, 4):
        raise GeometryError(f"blender RT: expected shape (3,4) or (4,4), got {RT.shape}")
    T = np.eye(4)
    T[:3] = RT[:3]
    check_pose(T, "blender RT")
    T[:3] = OPENCV_FROM_BLENDER @ T[:3]
    return T


def blender_from_w2c(w2c) -> np.ndarray:
    """Blender world-to-camera [R|t] (3,4) (Zero-1-to-3 layout) from an OpenCV w2c (4,4)."""
    w2c = as_array(w2c, "w2c", (4, 4))
    check_pose(w2c)
    return OPENCV_FROM_BLENDER @ w2c[:3]


def w2c_from_pytorch3d(R, T) -> np.ndarray:
    """OpenCV w2c (4,4) from PyTorch3D / CO3D `viewpoint.R` (3,3) and `viewpoint.T` (3,).

    PyTorch3D: row vectors, X_cam = X_world @ R + T, camera axes x left, y up, z forward.
    So in column form X_p3d = R^T X_world + T, and X_cv = diag(-1,-1,1) X_p3d."""
    R = as_array(R, "pytorch3d R", (3, 3))
    T = as_array(T, "pytorch3d T", (3,))
    check_rotation(R, "pytorch3d R")
    return make_pose(OPENCV_FROM_PYTORCH3D @ R.T, OPENCV_FROM_PYTORCH3D @ T)


def pytorch3d_from_w2c(w2c) -> tuple[np.ndarray, np.ndarray]:
    """(R (3,3), T (3,)) in PyTorch3D's row-vector convention from an OpenCV w2c (4,4)."""
    w2c = as_array(w2c, "w2c", (4, 4))
    check_pose(w2c)
    return (OPENCV_FROM_PYTORCH3D @ w2c[:3, :3]).T, OPENCV_FROM_PYTORCH3D @ w2c[:3, 3]


def w2c_from_colmap(qvec, tvec) -> np.ndarray:
    """OpenCV w2c (4,4) from a COLMAP image's qvec (w, x, y, z) and tvec (world-to-camera)."""
    return make_pose(quat_wxyz_to_matrix(qvec), as_array(tvec, "tvec", (3,)))


def colmap_from_w2c(w2c) -> tuple[np.ndarray, np.ndarray]:
    """(qvec (w, x, y, z), tvec (3,)) in COLMAP's convention from an OpenCV w2c (4,4)."""
    w2c = as_array(w2c, "w2c", (4, 4))
    check_pose(w2c)
    return matrix_to_quat_wxyz(w2c[:3, :3]), w2c[:3, 3].copy()


def parse_realestate10k_line(line: str, width: int, height: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(timestamp_us, K (3,3) pixels, w2c (4,4)) from one RealEstate10K camera line.

    The line holds 19 numbers: timestamp (microseconds), fx fy cx cy normalised by the image
    width/height, two zeros, then a row-major 3x4 world-to-camera [R|t] in OpenCV axes. K is
    returned for a `width` x `height` image in the contract's pixel-centre convention
    (see intrinsics.intrinsics_from_normalized)."""
    from .intrinsics import intrinsics_from_normalized

    parts = line.split()
    if len(parts) != 19:
        raise GeometryError(f"RealEstate10K line: expected 19 numbers, got {len(parts)}")
    try:
        vals = [float(p) for p in parts]
    except ValueError as e:
        raise GeometryError(f"RealEstate10K line: not numeric ({e})") from e
    v = as_array(vals, "RealEstate10K line", (19,))
    K = intrinsics_from_normalized(v[1], v[2], v[3], v[4], width, height)
    w2c = np.eye(4)
    w2c[:3] = v[7:].reshape(3, 4)
    check_pose(w2c, "RealEstate10K pose")
    return int(round(v[0])), K, w2c


# ----------------------------------------------------------------------------- ROS


def camera_to_parent_from_ros_pose(position, quat_xyzw) -> np.ndarray:
    """4x4 camera-to-parent transform from a ROS pose/transform of a camera frame.

    position (x, y, z): the camera frame's origin in the parent frame; quat_xyzw: its
    orientation in ROS (x, y, z, w) order. X_parent = T @ X_camera."""
    return make_pose(quat_xyzw_to_matrix(quat_xyzw), as_array(position, "position", (3,)))


def ros_pose_from_camera_to_parent(T) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quat_xyzw (4,)) of a ROS pose from a camera-to-parent transform (4,4)."""
    T = as_array(T, "camera_to_parent", (4, 4))
    check_pose(T, "camera_to_parent")
    return T[:3, 3].copy(), matrix_to_quat_xyzw(T[:3, :3])


def w2c_from_ros_camera_pose(position, quat_xyzw) -> np.ndarray:
    """Our w2c (4,4) (parent = world) from the ROS pose of an OPTICAL camera frame.

    The ROS pose is camera-to-parent, so this is its inverse. For a body frame
    (x forward, y left, z up) first compose with BODY_FROM_OPTICAL."""
    return invert_pose(camera_to_parent_from_ros_pose(position, quat_xyzw))


def ros_camera_pose_from_w2c(w2c) -> tuple[np.ndarray, np.ndarray]:
    """(position, quat_xyzw) of the ROS pose (camera-to-parent) of an optical frame from w2c."""
    w2c = as_array(w2c, "w2c", (4, 4))
    check_pose(w2c)
    return ros_pose_from_camera_to_parent(invert_pose(w2c))
