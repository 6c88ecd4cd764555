"""Every parameter of gst_node, declared in one table with its descriptor.

READ_ONLY parameters are fixed at start-up (from config/gst.yaml, a launch file or
`--ros-args -p`); the others may be changed while the node runs (`ros2 param set`) and are read
where they are used. Ranges are enforced by rclpy through the descriptors.
"""
from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

IMAGE_QOS_CHOICES = ("sensor_data", "reliable", "system_default")
TOKENIZER_BACKENDS = ("torch", "onnx")
IMAGE_TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str
    read_only: bool = True
    range: tuple[float, float] | None = None   # inclusive [lo, hi] for int / float parameters


PARAMETERS: tuple[Param, ...] = (
    # the model (GSTEngine / EngineConfig)
    Param("model_dir", "", "GST model directory; empty = the shipped model (models/gst_small)"),
    Param("device", "auto", "torch device: auto (cuda when available), cpu, cuda, cuda:N"),
    Param("tokenizer_backend", "torch", "tokenizer backend: torch or onnx (ONNX Runtime)"),
    Param("temperature", 1.0, "sampling temperature", range=(0.01, 10.0)),
    Param("top_k", 100, "top-k sampling (0 = off)", range=(0, 100000)),
    Param("top_p", 1.0, "nucleus sampling threshold (1 = off)", range=(0.01, 1.0)),
    Param("cfg_scale", 1.0, "classifier-free guidance scale (1 = off)", range=(0.0, 20.0)),
    Param("default_fov_deg", 49.1, "field of view across the shorter image side when no camera_info is known",
          range=(1.0, 179.0)),
    Param("seed", 0, "seed of the engine's random generator", range=(0, 2**31 - 1)),
    Param("pose_estimate", "auto", "pose from the model: auto (the pose head when the model has one, else "
          "mean), mean (average of the sampled camera tokens), mode (the most likely sample) or head "
          "(the pose head's rotation)"),
    Param("pose_symmetric", True, "head read-outs: also read the pair swapped and average the two rotation "
          "estimates (one batch of two)"),
    Param("pose_mirror", True, "head read-outs with a centre head: also read the pair mirrored left-right "
          "(both images flipped) and average the estimate mapped back (one batch)"),
    Param("view_samples", 16, "views sampled for a goal view (their per-pixel spread goes to "
          "gst/goal_view/spread, the one the model places closest to the goal camera to "
          "gst/goal_view/sample); 1 = one sample", range=(1, 64)),
    Param("view_keep", 4, "a goal view is the per-pixel mean of the view_keep samples the model places "
          "closest to the goal camera (the expected view of the goal's side); 0 = of all of them",
          range=(0, 64)),
    Param("view_worker", True, "draw goal and candidate views on a second worker thread with its own copy "
          "of the model (~60 MB more), so poses keep flowing while a view is drawn; false: one worker "
          "for everything (a goal view then holds up the poses for its whole time)"),
    Param("autostart", False, "configure and activate on start (the demo and stack runner set it)"),
    # inputs
    Param("cameras", ["camera"], "camera names; each subscribes <name>/<image_topic> and "
          "<name>/<camera_info_topic> and is estimated against the same reference"),
    Param("image_topic", "image_raw", "image topic under each camera name"),
    Param("image_transport", "raw", "raw: sensor_msgs/Image on <camera>/<image_topic>; compressed: "
          "sensor_msgs/CompressedImage (JPEG or PNG) on <camera>/<image_topic>/compressed, as "
          "image_transport's compressed plugin publishes it"),
    Param("camera_info_topic", "camera_info", "camera_info topic under each camera name"),
    Param("use_camera_info", True, "use CameraInfo intrinsics for the rays (else default_fov_deg)",
          read_only=False),
    Param("image_qos", "sensor_data",
          "QoS of the camera subscriptions (REP 2003): " + ", ".join(IMAGE_QOS_CHOICES)),
    Param("image_qos_depth", 5, "history depth of the camera subscriptions", range=(1, 100)),
    Param("max_image_pixels", 4096 * 4096, "larger images are rejected", range=(1, 2**28)),
    Param("max_frame_age_s", 1.0, "frames waiting longer than this when the worker reaches them are "
          "dropped as stale (0 = no limit)", read_only=False, range=(0.0, 3600.0)),
    # the reference view
    Param("reference_frame", "gst_reference", "TF frame of the reference camera (optical axes); anchor it in "
          "your tree, e.g. a static map -> reference transform recorded where the reference view was taken"),
    Param("reference_topic", "gst/reference/image", "reference image topic (transient local)"),
    Param("reference_info_topic", "gst/reference/camera_info",
          "reference camera_info topic (transient local)"),
    Param("reference_camera", "", "camera whose latest frame the set_reference service (and "
          "reference_from_first_frame) takes; empty = the first camera"),
    Param("reference_from_first_frame", True, "take the first valid frame as the reference when none is set",
          read_only=False),
    # pose output
    Param("estimated_frames", [""], "TF child frame per camera (same order as cameras); empty entries or a "
          "shorter list = <camera>_estimated"),
    Param("pose_samples", 4, "sampled poses per estimate for the camera-token read-outs (the covariance "
          "comes from their spread); a model with pose and centre heads samples none",
          read_only=False, range=(1, 64)),
    Param("keyframe_deg", 30.0, "read each frame against the reference and against the nearest keyframe "
          "(an earlier frame with its estimate) and keep the reading the model predicts is better; a frame "
          "this many degrees from every keyframe and the reference becomes one (0 = against the reference "
          "only)", read_only=False, range=(0.0, 180.0)),
    Param("translation_scale", 1.0, "metres per model unit: the model's translation is unit-scale",
          read_only=False, range=(1e-6, 1e6)),
    Param("publish_tf", True, "publish reference -> estimated camera on /tf", read_only=False),
    # candidate views and goals
    Param("candidate_count", 4, "candidate viewpoints proposed from the reference (0 = off)", range=(0, 16)),
    Param("candidate_period_s", 30.0, "recompute candidates this often (0 = only when the reference changes)",
          range=(0.0, 86400.0)),
    Param("candidate_frame_prefix", "gst_", "candidate TF frames are <prefix>candidate_<i>"),
    Param("goal_topic", "gst/goal", "geometry_msgs/PoseStamped: pose of a requested camera in the reference "
          "frame; answered with a predicted view on gst/goal_view/{image,camera_info}"),
    Param("goal_from_keyframes", True, "predict a goal's view from the seen view nearest it in rotation (the "
          "reference or a keyframe of any camera; published on gst/goal_view/observation) instead of always "
          "from the reference", read_only=False),
    # rviz and diagnostics
    Param("frustum_depth", 0.2, "drawn depth of camera frustums (metres, after translation_scale)",
          read_only=False, range=(1e-4, 100.0)),
    Param("diagnostics_period_s", 1.0, "period of /diagnostics", range=(0.05, 60.0)),
    Param("log_throttle_s", 5.0, "minimum seconds between two error logs of the same kind", read_only=False,
          range=(0.0, 3600.0)),
)

BY_NAME = {p.name: p for p in PARAMETERS}


def descriptor(p: Param) -> ParameterDescriptor:
    """The rcl_interfaces ParameterDescriptor of one table entry."""
    d = ParameterDescriptor(name=p.name, description=p.description, read_only=p.read_only)
    if p.range is not None:
        lo, hi = p.range
        if isinstance(p.default, bool):
            raise TypeError(f"parameter {p.name}: a bool cannot have a range")
        if isinstance(p.default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_all(node) -> None:
    """Declare every parameter of PARAMETERS on `node` (values from overrides / params files)."""
    for p in PARAMETERS:
        node.declare_parameter(p.name, p.default, descriptor(p))


def value(node, name: str):
    """Current value of a declared parameter (string arrays come back as a list)."""
    v = node.get_parameter(name).value
    return list(v) if isinstance(v, (tuple, list)) or type(v).__name__ == "array" else v
