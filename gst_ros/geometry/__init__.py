"""Camera geometry of gst_ros (numpy/torch only, no ROS).

Convention (stated in full in conventions.py): poses are 4x4 world-to-camera `w2c`
(X_cam = R X_world + t), OpenCV / REP 103 optical axes (x right, y down, z forward); K is 3x3
in pixels with the centre of the top-left pixel at (0, 0). Plücker maps are (B,6,H,W) with
channels PLUCKER_ORDER = "md" = [m_x, m_y, m_z, d_x, d_y, d_z]. Translation is known only up
to scale. Bad input raises GeometryError (a ValueError).
"""
from .conventions import (
    BODY_FROM_OPTICAL,
    SCENE_CENTER_REF,
    blender_from_w2c,
    camera_center,
    camera_to_parent_from_ros_pose,
    center_facing_scene,
    colmap_from_w2c,
    invert_pose,
    look_at,
    make_pose,
    matrix_to_quat_wxyz,
    matrix_to_quat_xyzw,
    parse_realestate10k_line,
    pytorch3d_from_w2c,
    quat_wxyz_to_matrix,
    quat_xyzw_to_matrix,
    ros_camera_pose_from_w2c,
    ros_pose_from_camera_to_parent,
    w2c_from_blender,
    w2c_from_colmap,
    w2c_from_pytorch3d,
    w2c_from_ros_camera_pose,
)
from .errors import GeometryError, check_intrinsics, check_pose, check_rotation
from .intrinsics import (
    center_square_box,
    crop_resize_intrinsics,
    fov_from_intrinsics,
    intrinsics_from_camera_info,
    intrinsics_from_co3d,
    intrinsics_from_fov,
    intrinsics_from_normalized,
    make_intrinsics,
    project_points,
)
from .metrics import (
    RotationSpread,
    TranslationSpread,
    accuracy_at,
    camera_center_accuracy,
    camera_center_errors,
    relative_rotation_errors,
    rotation_error_deg,
    rotation_mean,
    translation_spread,
    umeyama,
)
from .plucker import PLUCKER_CHANNELS, PLUCKER_ORDER, join_plucker, plucker_map, split_plucker
from .rays_to_camera import CameraFit, cameras_from_plucker
from .relative import closest_point_to_lines, normalize_scene, relative_pose
from .rotations import geodesic_angle, so3_exp, so3_log

__all__ = [
    "SCENE_CENTER_REF", "center_facing_scene",
    "BODY_FROM_OPTICAL", "CameraFit", "GeometryError", "PLUCKER_CHANNELS", "PLUCKER_ORDER",
    "RotationSpread", "TranslationSpread", "accuracy_at", "blender_from_w2c", "camera_center",
    "camera_center_accuracy", "camera_center_errors", "camera_to_parent_from_ros_pose",
    "cameras_from_plucker", "center_square_box", "check_intrinsics", "check_pose", "check_rotation",
    "closest_point_to_lines", "colmap_from_w2c", "crop_resize_intrinsics", "fov_from_intrinsics",
    "geodesic_angle", "intrinsics_from_camera_info", "intrinsics_from_co3d", "intrinsics_from_fov",
    "intrinsics_from_normalized", "invert_pose", "join_plucker", "look_at", "make_intrinsics",
    "make_pose", "matrix_to_quat_wxyz", "matrix_to_quat_xyzw", "normalize_scene",
    "parse_realestate10k_line", "plucker_map", "project_points", "pytorch3d_from_w2c",
    "quat_wxyz_to_matrix", "quat_xyzw_to_matrix", "relative_pose", "relative_rotation_errors",
    "ros_camera_pose_from_w2c", "ros_pose_from_camera_to_parent", "rotation_error_deg",
    "rotation_mean", "so3_exp", "so3_log", "split_plucker", "translation_spread", "umeyama",
    "w2c_from_blender", "w2c_from_colmap", "w2c_from_pytorch3d", "w2c_from_ros_camera_pose",
]
