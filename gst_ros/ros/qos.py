"""QoS profiles of gst_node (REP 2003).

- camera images / camera_info: sensor-data QoS by default (best effort, volatile, keep last),
  which matches both best-effort and reliable publishers; `image_qos` overrides it.
- the reference image and its camera_info: reliable + transient local, depth 1, so a reference
  published before the node started still arrives (a "latched" topic).
- /tf: reliable, volatile, depth 100 (what tf2_ros's broadcaster uses); /tf_static: reliable,
  transient local, depth 1 (tf2_ros's static broadcaster).
- outputs (pose, views, markers, diagnostics): reliable, depth 10 (system default).
"""
from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from gst_ros.ros.params import IMAGE_QOS_CHOICES


def image_qos(kind: str, depth: int) -> QoSProfile:
    """QoS of the camera subscriptions: `kind` is one of IMAGE_QOS_CHOICES."""
    if kind not in IMAGE_QOS_CHOICES:
        raise ValueError(f"image_qos must be one of {IMAGE_QOS_CHOICES}, got {kind!r}")
    if depth < 1:
        raise ValueError(f"image_qos_depth must be >= 1, got {depth}")
    if kind == "sensor_data":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=qos_profile_sensor_data.reliability,
                          durability=qos_profile_sensor_data.durability)
    if kind == "reliable":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.SYSTEM_DEFAULT,
                      durability=DurabilityPolicy.SYSTEM_DEFAULT)


def latched_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: the reference topics and /tf_static."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def tf_qos() -> QoSProfile:
    """/tf as tf2_ros publishes it: reliable, volatile, depth 100."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile: every other output."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
