"""Camera frustums for rviz: visualization_msgs/MarkerArray of LINE_LIST markers.

A frustum is drawn in the reference frame from the camera's pose there (camera-to-reference,
OpenCV optical axes: x right, y down, z forward) and its pixel intrinsics: four lines from the
camera centre to the image corners at depth `depth` (metres in the reference frame after
the node's translation_scale), the image rectangle, and a small triangle above the top edge
marking image "up" (-y).
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray


def frustum_segments(K: np.ndarray, width: int, height: int, cam_to_ref: np.ndarray,
                     depth: float) -> np.ndarray:
    """Line-segment end points (2N, 3) of a camera frustum, in the reference frame.

    K: (3,3) pixel intrinsics, OpenCV/ROS convention (centre of the top-left pixel is (0, 0),
    so the image spans [-0.5, width-0.5] x [-0.5, height-0.5]).
    cam_to_ref: (4,4) pose of the camera in the reference frame (inverse of w2c), OpenCV axes.
    depth: distance of the drawn image plane along the optical axis (z), same units as the
    translation of cam_to_ref.
    """
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(cam_to_ref, dtype=np.float64)
    if K.shape != (3, 3) or T.shape != (4, 4):
        raise ValueError(f"frustum needs K (3,3) and a (4,4) pose, got {K.shape} and {T.shape}")
    if not (np.isfinite(K).all() and np.isfinite(T).all()):
        raise ValueError("frustum: non-finite intrinsics or pose")
    if width <= 0 or height <= 0 or not depth > 0:
        raise ValueError(f"frustum: need positive width, height and depth, got {width}, {height}, {depth}")
    x0, y0, x1, y1 = -0.5, -0.5, width - 0.5, height - 0.5
    uv = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1],      # image corners
                   [0.5 * (x0 + x1), y0 - 0.25 * (y1 - y0)],   # "up" triangle tip
                   [x0 + 0.35 * (x1 - x0), y0], [x0 + 0.65 * (x1 - x0), y0]])
    rays = np.linalg.solve(K, np.concatenate([uv, np.ones((len(uv), 1))], axis=1).T).T
    pts_cam = rays * (depth / rays[:, 2:3])
    pts = pts_cam @ T[:3, :3].T + T[:3, 3]
    c = T[:3, 3]
    c0, c1, c2, c3, tip, b0, b1 = pts
    seg = [c, c0, c, c1, c, c2, c, c3,             # centre -> corners
           c0, c1, c1, c2, c2, c3, c3, c0,         # image rectangle
           b0, tip, tip, b1]                       # up marker
    return np.asarray(seg)


def frustum_marker(K: np.ndarray, width: int, height: int, cam_to_ref: np.ndarray, *,
                   frame_id: str, stamp, ns: str, marker_id: int, depth: float,
                   color: tuple[float, float, float, float], line_width: float = 0.01) -> Marker:
    """One LINE_LIST Marker for a camera frustum (see frustum_segments for conventions)."""
    m = Marker()
    m.header.frame_id = frame_id
    m.header.stamp = stamp
    m.ns = ns
    m.id = int(marker_id)
    m.type = Marker.LINE_LIST
    m.action = Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x = float(line_width)
    m.color = ColorRGBA(r=float(color[0]), g=float(color[1]), b=float(color[2]), a=float(color[3]))
    m.lifetime = Duration(sec=0, nanosec=0)   # forever, until replaced
    m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))
                for p in frustum_segments(K, width, height, cam_to_ref, depth)]
    return m


def delete_marker(frame_id: str, stamp, ns: str, marker_id: int) -> Marker:
    """A DELETE marker for one (ns, id): removes a frustum that is no longer part of the set."""
    m = Marker()
    m.header.frame_id = frame_id
    m.header.stamp = stamp
    m.ns = ns
    m.id = int(marker_id)
    m.action = Marker.DELETE
    return m


def frustum_array(cameras, *, frame_id: str, stamp, ns: str, depth: float,
                  color: tuple[float, float, float, float], max_markers: int = 0) -> MarkerArray:
    """MarkerArray with one frustum per (K, width, height, cam_to_ref) in `cameras`, ids 0..N-1
    in namespace `ns`, then DELETE markers for ids N..max_markers-1 so that frustums of an
    earlier, larger set vanish (only this namespace is touched)."""
    cameras = list(cameras)
    arr = MarkerArray()
    for i, (K, w, h, T) in enumerate(cameras):
        arr.markers.append(frustum_marker(K, w, h, T, frame_id=frame_id, stamp=stamp, ns=ns,
                                          marker_id=i, depth=depth, color=color))
    for i in range(len(cameras), max_markers):
        arr.markers.append(delete_marker(frame_id, stamp, ns, i))
    return arr
