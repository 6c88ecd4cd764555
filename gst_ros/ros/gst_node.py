"""gst_node: the ROS 2 lifecycle node around GSTEngine ("where am I?" and "what will I see?").

Lifecycle: configure loads the model (twice with `view_worker`: one copy for the poses, one for
the views) and creates the publishers; activate subscribes, starts the worker threads (the pose
worker and, with `view_worker`, the view worker for goal and candidate views) and the timers;
deactivate stops them; cleanup releases the models. With the
parameter `autostart` the node configures and activates itself on start.

Frames (REP 103/105). `reference_frame` is the optical frame (x right, y down, z forward) of the
camera that took the reference view. Every estimate is the TF transform reference_frame ->
<estimated frame of the camera>, the camera's optical frame pose in the reference frame, stamped
with the input image's stamp. The model's translation is unit-scale: it is multiplied by
`translation_scale` (metres per model unit). The node never publishes a transform whose child
is the image's own frame_id (that frame belongs to the camera driver's tree).

Topics (relative names, remap as usual):
  in   <camera>/image_raw, <camera>/camera_info       (sensor-data QoS by default; per camera)
       gst/reference/image, gst/reference/camera_info (transient local)
       gst/goal  geometry_msgs/PoseStamped: a camera pose in reference_frame -> predicted view
  out  /tf, /tf_static (tf2_msgs/TFMessage), gst/<camera>/pose (PoseWithCovarianceStamped),
       gst/candidate_<i>/image + camera_info, gst/candidates/poses (PoseArray),
       gst/markers (MarkerArray: frustums), gst/goal_view/image + camera_info (+ spread and
       sample with view_samples > 1, + observation: the seen view it was predicted from),
       /diagnostics,
       gst/reference/current (the reference image with its original stamp; transient local)
  srv  gst/set_reference (std_srvs/Trigger): the latest frame of `reference_camera` becomes the
       reference.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseStamped, PoseWithCovarianceStamped
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from gst_ros.engine.tracking import KeyframeTracker, NearestView, nearest_view
from gst_ros.ros import params as P
from gst_ros.ros.conversions import (
    ConversionError,
    K_to_camera_info,
    camera_info_image_size,
    camera_info_to_K,
    compressed_image_to_numpy,
    image_to_numpy,
    numpy_to_image,
    pose_to_w2c,
    tf_message,
    w2c_to_pose,
    w2c_to_transform_stamped,
)
from gst_ros.ros.diagnostics import StreamStats, diagnostic_array
from gst_ros.ros.markers import frustum_array
from gst_ros.ros.qos import image_qos, latched_qos, output_qos, tf_qos
from gst_ros.ros.worker import LatestItemWorker

NODE_NAME = "gst_node"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
ESTIMATE_COLOR = (0.1, 0.9, 0.2, 1.0)
CANDIDATE_COLOR = (0.2, 0.5, 1.0, 1.0)
GOAL_COLOR = (1.0, 0.6, 0.0, 1.0)


@dataclass
class Frame:
    """One converted camera frame waiting for the worker."""
    camera: str
    image: np.ndarray          # (H,W,3) uint8 RGB
    K: np.ndarray | None       # (3,3) pixel intrinsics of `image`, or None (default FOV)
    stamp: object              # builtin_interfaces/Time of the message
    frame_id: str              # the image's own optical frame
    received: float            # time.monotonic() at arrival
    convert_s: float = 0.0     # time spent converting and validating the message


@dataclass
class Reference:
    image: np.ndarray
    K: np.ndarray | None
    source: str
    version: int
    stamp: object = None       # stamp of the image that became the reference
    frame_id: str = ""         # that image's frame_id


def classify_problem(message: str) -> str:
    """Short diagnostics key of an image ConversionError message (rejected_<key> in diagnostics)."""
    m = message.lower()
    for key, words in (("oversized", ("exceeds",)),
                       ("encoding", ("unsupported encoding", "unsupported format", "depth stream")),
                       ("empty", ("empty",)), ("undecodable", ("could not decode",)),
                       ("size", ("step", "bytes", "size", "even width"))):
        if any(w in m for w in words):
            return key
    return "other"


def scale_translation(w2c: np.ndarray, scale: float) -> np.ndarray:
    """w2c (4,4) with its translation multiplied by `scale`. The camera centre C = -R^T t scales by
    the same factor, so this is the camera in scene units (metres) from the model's unit scale."""
    out = np.array(w2c, dtype=np.float64, copy=True)
    out[:3, 3] *= scale
    return out


def scale_covariance(cov: np.ndarray, scale: float) -> np.ndarray:
    """(6,6) ROS-order [x, y, z, rx, ry, rz] covariance after positions are scaled by `scale`."""
    S = np.diag([scale, scale, scale, 1.0, 1.0, 1.0])
    return S @ np.asarray(cov, dtype=np.float64) @ S


class GSTNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        P.declare_all(self)
        self.engine = None
        self.view_engine = None   # goal and candidate views: the same model, a copy of its own (view_worker)
        self._ref_lock = threading.Lock()
        self._reference: Reference | None = None
        self._ref_version = 0
        self._ref_K: np.ndarray | None = None          # from the reference camera_info topic
        self._ref_K_size: tuple[int, int] | None = None
        self._camera_K: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}
        self._latest: dict[str, Frame] = {}
        self._trackers: dict[str, tuple[int, KeyframeTracker]] = {}   # camera -> (reference version, tracker)
        self._trackers_lock = threading.Lock()   # the pose worker adds trackers while the view worker reads
        self._worker: LatestItemWorker | None = None        # poses
        self._view_worker: LatestItemWorker | None = None   # goal and candidate views (= _worker when
        #                                                      the view_worker parameter is false)
        self._gst_subs, self._gst_timers, self._gst_pubs, self._gst_services = [], [], {}, []
        self._last_log: dict[str, float] = {}
        self._active = False
        self.stats: dict[str, StreamStats] = {}

    # ------------------------------------------------------------------------------------
    # helpers
    def p(self, name: str):
        return P.value(self, name)

    def _log_throttled(self, key: str, text: str, level: str = "error") -> None:
        """Log `text` at most once per log_throttle_s for each `key` (per stream and problem)."""
        now = time.monotonic()
        last = self._last_log.get(key)
        if last is not None and now - last < float(self.p("log_throttle_s")):
            return
        self._last_log[key] = now
        getattr(self.get_logger(), level)(text)

    def reference_state(self) -> dict:
        with self._ref_lock:
            ref = self._reference
        if ref is None:
            return {"state": "none", "version": 0}
        return {"state": "set", "source": ref.source, "version": ref.version,
                "stamp": f"{ref.stamp.sec}.{ref.stamp.nanosec:09d}", "frame_id": ref.frame_id,
                "size": f"{ref.image.shape[1]}x{ref.image.shape[0]}",
                "intrinsics": "camera_info" if ref.K is not None else "default_fov"}

    # ------------------------------------------------------------------------------------
    # lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._read_static_config()
        except ValueError as e:
            self.get_logger().error(f"configure: bad parameters: {e}")
            return TransitionCallbackReturn.FAILURE
        try:
            engine = self._load_engine()
            view_engine = self._load_engine() if self.p("view_worker") else engine
        except Exception as e:  # missing model, bad weights, bad device: say what and stay unconfigured
            self.get_logger().error(f"configure: could not load the GST model: {e}")
            return TransitionCallbackReturn.FAILURE
        self.engine, self.view_engine = engine, view_engine
        self._create_publishers()
        self.stats = {c: StreamStats(f"camera {c}") for c in self.cameras}
        self.stats["reference"] = StreamStats("reference topic")
        self.stats["goal"] = StreamStats("goal topic")
        self.stats["candidates"] = StreamStats("candidate views")
        self.get_logger().info(
            f"configured: model {self.model_dir}, image size {self.engine.image_size}, "
            f"cameras {self.cameras}, "
            f"reference frame {self.reference_frame!r}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._worker = LatestItemWorker(self._handle, self._on_worker_error, name="gst_worker")
        self._worker.start()
        self._view_worker = self._worker
        if self.view_engine is not self.engine:
            self._view_worker = LatestItemWorker(self._handle, self._on_worker_error, name="gst_view_worker")
            self._view_worker.start()
        self._create_subscriptions()
        diag_period = float(self.p("diagnostics_period_s"))
        self._gst_timers.append(self.create_timer(diag_period, self._publish_diagnostics))
        period = float(self.p("candidate_period_s"))
        if self.candidate_count > 0 and period > 0:
            self._gst_timers.append(self.create_timer(period, self._request_candidates))
        self._active = True
        if self._reference is not None:
            self._request_candidates()
        self.get_logger().info("active: waiting for images" +
                               ("" if self._reference is not None else " and a reference view"))
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_activity()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._stop_activity()
        self._destroy_publishers()
        self.engine = self.view_engine = None
        with self._ref_lock:
            self._reference = None
        self._latest.clear()
        self._camera_K.clear()
        with self._trackers_lock:
            self._trackers.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._stop_activity()
        self._destroy_publishers()
        self.engine = self.view_engine = None
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._stop_activity()
        return TransitionCallbackReturn.SUCCESS

    def _stop_activity(self) -> None:
        self._active = False
        for s in self._gst_subs:
            self.destroy_subscription(s)
        for t in self._gst_timers:
            self.destroy_timer(t)
        for s in self._gst_services:
            self.destroy_service(s)
        self._gst_subs, self._gst_timers, self._gst_services = [], [], []
        workers = list({id(w): w for w in (self._worker, self._view_worker) if w is not None}.values())
        for worker in workers:   # ask every worker first, then wait for them against one deadline
            worker.request_stop()
        deadline = time.monotonic() + 30.0
        for worker in workers:
            if not worker.stop(timeout=max(0.0, deadline - time.monotonic())):
                self.get_logger().warn(f"worker thread {worker.name} did not stop within 30 s "
                                       "(inference still running)")
        self._worker = self._view_worker = None

    # ------------------------------------------------------------------------------------
    # configuration
    def _read_static_config(self) -> None:
        cams = [str(c) for c in self.p("cameras")]
        if not cams:
            raise ValueError("cameras is empty: name at least one camera")
        for c in cams:
            if not _NAME_RE.match(c):
                raise ValueError(f"camera name {c!r} is not a valid ROS name (letters, digits, _ and /)")
        if len(set(cams)) != len(cams):
            raise ValueError(f"camera names must be unique, got {cams}")
        frames = [str(f) for f in self.p("estimated_frames")]
        if len(frames) > len(cams):
            raise ValueError(f"estimated_frames has {len(frames)} entries for {len(cams)} cameras")
        frames += [""] * (len(cams) - len(frames))
        self.cameras = cams
        self.estimated_frames = {c: (f or c.replace("/", "_") + "_estimated") for c, f in zip(cams, frames)}
        self.reference_frame = str(self.p("reference_frame"))
        if not self.reference_frame:
            raise ValueError("reference_frame is empty")
        clash = [f for f in self.estimated_frames.values() if f == self.reference_frame]
        if clash or len(set(self.estimated_frames.values())) != len(cams):
            raise ValueError(f"estimated frames {list(self.estimated_frames.values())} must be unique and "
                             f"differ from reference_frame {self.reference_frame!r}")
        ref_cam = str(self.p("reference_camera")) or cams[0]
        if ref_cam not in cams:
            raise ValueError(f"reference_camera {ref_cam!r} is not one of cameras {cams}")
        self.reference_camera = ref_cam
        backend = str(self.p("tokenizer_backend"))
        if backend not in P.TOKENIZER_BACKENDS:
            raise ValueError(f"tokenizer_backend must be one of {P.TOKENIZER_BACKENDS}, got {backend!r}")
        self.image_qos = image_qos(str(self.p("image_qos")), int(self.p("image_qos_depth")))
        self.image_transport = str(self.p("image_transport"))
        if self.image_transport not in P.IMAGE_TRANSPORTS:
            raise ValueError(f"image_transport must be one of {P.IMAGE_TRANSPORTS}, "
                             f"got {self.image_transport!r}")
        self.candidate_count = int(self.p("candidate_count"))
        self.candidate_prefix = str(self.p("candidate_frame_prefix"))
        self.max_pixels = int(self.p("max_image_pixels"))

    def _load_engine(self):
        from gst_ros.engine.engine import EngineConfig, GSTEngine  # heavy (torch): only when configuring

        model_dir = str(self.p("model_dir"))
        kw = {} if not model_dir else {"model_dir": model_dir}
        cfg = EngineConfig(**kw, device=str(self.p("device")),
                           tokenizer_backend=str(self.p("tokenizer_backend")),
                           temperature=float(self.p("temperature")), top_k=int(self.p("top_k")),
                           top_p=float(self.p("top_p")), cfg_scale=float(self.p("cfg_scale")),
                           default_fov_deg=float(self.p("default_fov_deg")), seed=int(self.p("seed")),
                           pose_estimate=str(self.p("pose_estimate")),
                           pose_symmetric=bool(self.p("pose_symmetric")),
                           pose_mirror=bool(self.p("pose_mirror")),
                           view_samples=int(self.p("view_samples")), view_keep=int(self.p("view_keep")))
        self.model_dir = cfg.model_dir
        return GSTEngine(cfg)

    def _create_publishers(self) -> None:
        out = output_qos()
        pubs = {
            "tf": self.create_publisher(TFMessage, "/tf", tf_qos()),
            "tf_static": self.create_publisher(TFMessage, "/tf_static", latched_qos()),
            "markers": self.create_publisher(MarkerArray, "gst/markers", out),
            "reference": self.create_publisher(Image, "gst/reference/current", latched_qos()),
            "candidate_poses": self.create_publisher(PoseArray, "gst/candidates/poses", out),
            "goal_image": self.create_publisher(Image, "gst/goal_view/image", out),
            "goal_info": self.create_publisher(CameraInfo, "gst/goal_view/camera_info", out),
            "goal_spread": self.create_publisher(Image, "gst/goal_view/spread", out),
            "goal_sample": self.create_publisher(Image, "gst/goal_view/sample", out),
            "goal_observation": self.create_publisher(Image, "gst/goal_view/observation", out),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", out),
        }
        for c in self.cameras:
            pubs[f"pose/{c}"] = self.create_publisher(PoseWithCovarianceStamped, f"gst/{c}/pose", out)
        for i in range(self.candidate_count):
            pubs[f"cand_image/{i}"] = self.create_publisher(Image, f"gst/candidate_{i}/image", latched_qos())
            pubs[f"cand_info/{i}"] = self.create_publisher(CameraInfo, f"gst/candidate_{i}/camera_info",
                                                           latched_qos())
        self._gst_pubs = pubs

    def _destroy_publishers(self) -> None:
        for pub in self._gst_pubs.values():
            self.destroy_publisher(pub)
        self._gst_pubs = {}

    def _create_subscriptions(self) -> None:
        for c in self.cameras:
            self._gst_subs.append(self.create_subscription(
                *self._camera_image_topic(c), lambda m, c=c: self._on_image(c, m), self.image_qos))
            self._gst_subs.append(self.create_subscription(
                CameraInfo, f"{c}/{self.p('camera_info_topic')}", lambda m, c=c: self._on_camera_info(c, m),
                self.image_qos))
        self._gst_subs.append(self.create_subscription(Image, str(self.p("reference_topic")),
                                                   self._on_reference_image, latched_qos()))
        self._gst_subs.append(self.create_subscription(CameraInfo, str(self.p("reference_info_topic")),
                                                   self._on_reference_info, latched_qos()))
        self._gst_subs.append(self.create_subscription(PoseStamped, str(self.p("goal_topic")), self._on_goal,
                                                   output_qos()))
        self._gst_services.append(self.create_service(Trigger, "gst/set_reference", self._on_set_reference))

    def _camera_image_topic(self, camera: str) -> tuple[type, str]:
        """Message type and topic of a camera's images: <camera>/<image_topic> (sensor_msgs/Image),
        or with image_transport "compressed" image_transport's <camera>/<image_topic>/compressed
        (sensor_msgs/CompressedImage, JPEG or PNG)."""
        topic = f"{camera}/{self.p('image_topic')}"
        if self.image_transport == "compressed":
            return CompressedImage, f"{topic}/compressed"
        return Image, topic

    # ------------------------------------------------------------------------------------
    # executor-thread callbacks: convert, validate, hand over; never run inference here
    def _reject(self, stream: str, what: str, e: Exception, kind: str | None = None) -> None:
        text = f"{what}: {e}"
        kind = kind or classify_problem(str(e))
        self.stats[stream].on_rejected(kind, text, camera_info=kind == "camera_info")
        self._log_throttled(f"{stream}/{kind}", f"[{stream}] rejected {text}")

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        if self._uncalibrated(camera, msg):
            self._camera_K[camera] = (None, None)
            return
        try:
            K = camera_info_to_K(msg)
        except ConversionError as e:
            self._reject(camera, "camera_info", e, kind="camera_info")
            return
        self._camera_K[camera] = (K, camera_info_image_size(msg))

    def _convert(self, stream: str, msg: Image | CompressedImage) -> np.ndarray | None:
        try:
            if isinstance(msg, CompressedImage):
                return compressed_image_to_numpy(msg, max_pixels=self.max_pixels)
            return image_to_numpy(msg, max_pixels=self.max_pixels)
        except ConversionError as e:
            self._reject(stream, "image", e)
            return None

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        received = time.monotonic()
        stats = self.stats[camera]
        stats.on_received(received)
        rgb = self._convert(camera, msg)
        if rgb is None:
            return
        K = None
        if self.p("use_camera_info") and self._camera_K.get(camera, (None,))[0] is not None:
            K_info, (w, h) = self._camera_K[camera]
            if (w, h) != (rgb.shape[1], rgb.shape[0]):
                self._reject(camera, "image", ConversionError(
                    f"camera_info is for {w}x{h} images but the image is "
                    f"{rgb.shape[1]}x{rgb.shape[0]}"), kind="camera_info_size")
                return
            K = K_info
        frame = Frame(camera, rgb, K, msg.header.stamp, msg.header.frame_id, received,
                      convert_s=time.monotonic() - received)
        self._latest[camera] = frame
        if self._reference is None:
            if camera == self.reference_camera and self.p("reference_from_first_frame"):
                if K is None and self._camera_info_expected(camera):
                    stats.on_dropped("no_reference")   # wait for the camera_info's K, then take the reference
                    return
                self._set_reference(rgb, K, f"first frame of {camera}", msg.header.stamp, msg.header.frame_id)
            else:
                stats.on_dropped("no_reference")
                self._log_throttled(f"{camera}/noref", f"[{camera}] no reference view yet: publish one on "
                                    f"{self.p('reference_topic')} or call gst/set_reference", "warn")
                return
        if self._worker is not None and self._worker.put(("camera", camera), frame):
            stats.on_dropped("replaced")

    def _camera_info_expected(self, camera: str) -> bool:
        """True while use_camera_info is on, no K has arrived for `camera` and a camera_info
        publisher for it exists (its first message is on the way)."""
        if not self.p("use_camera_info") or camera in self._camera_K:
            return False
        return self.count_publishers(f"{camera}/{self.p('camera_info_topic')}") > 0

    def _uncalibrated(self, stream: str, msg: CameraInfo) -> bool:
        """True for a camera_info whose K is all zeros, the ROS convention for an uncalibrated
        camera: its frames then use default_fov_deg (said once per log_throttle_s), as when no
        camera_info is published, until a calibrated camera_info arrives."""
        if any(float(v) for v in msg.k):
            return False
        self._log_throttled(f"{stream}/uncalibrated", (
            f"[{stream}] camera_info has an all-zero K (an uncalibrated camera): using default_fov_deg "
            f"({float(self.p('default_fov_deg')):g} deg) until a calibrated camera_info arrives"), "warn")
        return True

    def _on_reference_info(self, msg: CameraInfo) -> None:
        if self._uncalibrated("reference", msg):
            self._ref_K = self._ref_K_size = None
            return
        try:
            self._ref_K = camera_info_to_K(msg)
            self._ref_K_size = camera_info_image_size(msg)
        except ConversionError as e:
            self._reject("reference", "reference camera_info", e, kind="camera_info")

    def _on_reference_image(self, msg: Image) -> None:
        received = time.monotonic()
        self.stats["reference"].on_received(received)
        rgb = self._convert("reference", msg)
        if rgb is None:
            return
        K = self._ref_K if self._ref_K_size == (rgb.shape[1], rgb.shape[0]) else None
        self._set_reference(rgb, K, f"topic {self.p('reference_topic')}", msg.header.stamp,
                            msg.header.frame_id)
        self.stats["reference"].on_processed(time.monotonic() - received, time.monotonic() - received)

    def _on_set_reference(self, request, response):
        frame = self._latest.get(self.reference_camera)
        if frame is None:
            response.success = False
            response.message = f"no frame from camera {self.reference_camera!r} yet"
            return response
        version = self._set_reference(frame.image, frame.K,
                                      f"set_reference service ({self.reference_camera})",
                                      frame.stamp, frame.frame_id)
        response.success = True
        response.message = f"reference {version} = latest frame of {self.reference_camera}"
        return response

    def _set_reference(self, image: np.ndarray, K, source: str, stamp, frame_id: str) -> int:
        """Make `image` (with intrinsics K or None) the reference view; republish it (with the
        original stamp and frame_id) on gst/reference/current and recompute the candidates."""
        with self._ref_lock:
            self._ref_version += 1
            self._reference = Reference(image, K, source, self._ref_version, stamp, frame_id)
            version = self._ref_version
        self._gst_pubs["reference"].publish(numpy_to_image(image, stamp, frame_id))
        self.get_logger().info(
            f"reference view {version} set from {source} ({image.shape[1]}x{image.shape[0]})")
        self._request_candidates()
        return version

    def _request_candidates(self) -> None:
        if self.candidate_count > 0 and self._view_worker is not None and self._reference is not None:
            if self._view_worker.put("candidates", time.monotonic()):
                self.stats["candidates"].on_dropped("replaced")

    def _on_goal(self, msg: PoseStamped) -> None:
        stats = self.stats["goal"]
        stats.on_received()
        if msg.header.frame_id not in ("", self.reference_frame):
            self._reject("goal", "goal", ValueError(
                f"goal pose is in frame {msg.header.frame_id!r}; it must be in {self.reference_frame!r} "
                "(this node does not look up TF)"), kind="frame")
            return
        try:
            w2c = scale_translation(pose_to_w2c(msg.pose), 1.0 / float(self.p("translation_scale")))
        except ConversionError as e:
            self._reject("goal", "goal", e, kind="pose")
            return
        if self._reference is None:
            self._reject("goal", "goal", ValueError("no reference view yet"), kind="no_reference")
            return
        worker = self._view_worker
        if worker is not None and worker.put("goal", (msg.header.stamp, w2c, time.monotonic())):
            stats.on_dropped("replaced")

    # ------------------------------------------------------------------------------------
    # worker threads (the pose worker; goal and candidates on the view worker): inference and publishing
    def _handle(self, key, item) -> None:
        if not self._active:
            return
        with self._ref_lock:
            ref = self._reference
        if ref is None:
            return
        if key == "candidates":
            self._run_candidates(ref)
        elif key == "goal":
            self._run_goal(ref, *item)
        else:
            self._run_estimate(ref, item)

    def _on_worker_error(self, key, item, exc: BaseException) -> None:
        stream = key[1] if isinstance(key, tuple) else key
        stats = self.stats.get(stream)
        if isinstance(exc, ValueError):  # the engine refused this input: a bad frame, not a bug
            if stats is not None:
                stats.on_rejected("engine_input", f"{type(exc).__name__}: {exc}")
            self._log_throttled(f"{stream}/engine_input", f"[{stream}] input rejected by the engine: {exc}")
        else:
            if stats is not None:
                stats.on_error(f"{type(exc).__name__}: {exc}")
            self._log_throttled(f"{stream}/error",
                                f"[{stream}] inference failed: {type(exc).__name__}: {exc}")

    def _run_estimate(self, ref: Reference, frame: Frame) -> None:
        stats = self.stats[frame.camera]
        max_age = float(self.p("max_frame_age_s"))
        if max_age > 0 and time.monotonic() - frame.received > max_age:
            stats.on_dropped("stale")
            return
        tracker = self._tracker(frame.camera, ref)
        est = tracker.estimate(frame.image, frame.K, samples=int(self.p("pose_samples")))
        stats.on_tracked(est.keyframe > 0, len(tracker.keyframes))
        t_inferred = time.monotonic()
        self.publish_estimate(frame, est)
        done = time.monotonic()
        # latency: arrival -> published; the node's own overhead: conversion + publishing
        stats.on_processed(done - frame.received, frame.convert_s + (done - t_inferred))

    def _tracker(self, camera: str, ref: Reference) -> KeyframeTracker:
        """The camera's KeyframeTracker on the current reference (a new reference starts it afresh:
        its keyframes were relative to the old one), with keyframe_deg as set now (worker thread)."""
        version, tracker = self._trackers.get(camera, (None, None))
        if tracker is None or version != ref.version or tracker.engine is not self.engine:
            tracker = KeyframeTracker(self.engine)
            tracker.set_reference(ref.image, ref.K)
            with self._trackers_lock:
                self._trackers[camera] = (ref.version, tracker)
        tracker.keyframe_deg = float(self.p("keyframe_deg"))
        return tracker

    def publish_estimate(self, frame: Frame, est) -> None:
        """Publish one PoseEstimate of `frame`'s camera: TF, PoseWithCovarianceStamped, frustum."""
        scale = float(self.p("translation_scale"))
        w2c = scale_translation(est.w2c, scale)
        child = self.estimated_frames[frame.camera]
        if self.p("publish_tf"):
            if child == frame.frame_id:
                self._log_throttled(f"{frame.camera}/reparent", (
                    f"[{frame.camera}] not publishing TF: the estimated frame {child!r} is the image's own "
                    "frame_id, which belongs to the camera driver's tree; set estimated_frames"))
            else:
                t = w2c_to_transform_stamped(w2c, self.reference_frame, child, stamp=frame.stamp)
                self._gst_pubs["tf"].publish(tf_message([t]))
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = frame.stamp
        msg.header.frame_id = self.reference_frame
        msg.pose.pose = w2c_to_pose(w2c)
        msg.pose.covariance = scale_covariance(est.covariance, scale).reshape(-1).tolist()
        self._gst_pubs[f"pose/{frame.camera}"].publish(msg)
        h, w = frame.image.shape[:2]
        K = self.engine.intrinsics_or_default(frame.image, frame.K)   # the K the engine used
        cam_to_ref = np.linalg.inv(w2c)
        self._gst_pubs["markers"].publish(frustum_array(
            [(K, w, h, cam_to_ref)], frame_id=self.reference_frame, stamp=frame.stamp,
            ns=f"estimated/{frame.camera}", depth=float(self.p("frustum_depth")), color=ESTIMATE_COLOR))

    def _run_candidates(self, ref: Reference) -> None:
        stats = self.stats["candidates"]
        t0 = time.monotonic()
        views = self.view_engine.propose_views(ref.image, n=self.candidate_count, K_obs=ref.K)
        t_inf = time.monotonic() - t0
        scale = float(self.p("translation_scale"))
        stamp = self.get_clock().now().to_msg()
        transforms, poses, cams = [], PoseArray(), []
        poses.header.stamp, poses.header.frame_id = stamp, self.reference_frame
        for i, view in enumerate(views):
            frame_id = f"{self.candidate_prefix}candidate_{i}"
            w2c = scale_translation(view.w2c, scale)
            size = view.image.shape[0]
            self._gst_pubs[f"cand_image/{i}"].publish(numpy_to_image(view.image, stamp, frame_id))
            self._gst_pubs[f"cand_info/{i}"].publish(K_to_camera_info(view.K, size, size, stamp, frame_id))
            transforms.append(w2c_to_transform_stamped(w2c, self.reference_frame, frame_id, stamp=stamp))
            poses.poses.append(w2c_to_pose(w2c))
            cams.append((view.K, size, size, np.linalg.inv(w2c)))
        self._gst_pubs["tf_static"].publish(tf_message(transforms))
        self._gst_pubs["candidate_poses"].publish(poses)
        self._gst_pubs["markers"].publish(frustum_array(
            cams, frame_id=self.reference_frame, stamp=stamp, ns="candidates",
            depth=float(self.p("frustum_depth")), color=CANDIDATE_COLOR, max_markers=self.candidate_count))
        total = time.monotonic() - t0
        stats.on_processed(total, total - t_inf)

    def goal_observation(self, ref: Reference, w2c_unit: np.ndarray) -> NearestView:
        """The seen view a goal camera `w2c_unit` (reference frame, model unit scale) is predicted
        from (view worker thread): with `goal_from_keyframes`, the one nearest it in rotation among the
        reference and every camera's keyframes on this reference (tracking.nearest_view), else
        the reference."""
        if not self.p("goal_from_keyframes"):
            return nearest_view((ref.image, ref.K), [], w2c_unit)
        with self._trackers_lock:   # a snapshot: the pose worker adds trackers and keyframes meanwhile
            trackers = [tracker for version, tracker in self._trackers.values() if version == ref.version]
        keyframes = [kf for tracker in trackers for kf in list(tracker.keyframes)]
        return nearest_view((ref.image, ref.K), keyframes, w2c_unit)

    def _run_goal(self, ref: Reference, stamp, w2c_unit: np.ndarray, received: float) -> None:
        source = self.goal_observation(ref, w2c_unit)
        view = self.view_engine.predict_view(source.image, source.w2c, K_obs=source.K)
        frame_id = f"{self.candidate_prefix}goal"
        if stamp.sec == 0 and stamp.nanosec == 0:
            stamp = self.get_clock().now().to_msg()
        size = view.image.shape[0]
        scale = float(self.p("translation_scale"))
        w2c = scale_translation(w2c_unit, scale)   # the requested camera, in the reference frame
        obs_frame = f"{self.candidate_prefix}goal_observation"
        self._gst_pubs["tf"].publish(tf_message([
            w2c_to_transform_stamped(w2c, self.reference_frame, frame_id, stamp=stamp),
            w2c_to_transform_stamped(scale_translation(source.view_w2c, scale), self.reference_frame,
                                     obs_frame, stamp=stamp)]))
        self._gst_pubs["goal_observation"].publish(numpy_to_image(source.image, stamp, obs_frame))
        self._gst_pubs["goal_image"].publish(numpy_to_image(view.image, stamp, frame_id))
        self._gst_pubs["goal_info"].publish(K_to_camera_info(view.K, size, size, stamp, frame_id))
        spread = view.spread_image()  # mono8: the samples' standard deviation in 0-255 intensity units
        if spread is not None:
            self._gst_pubs["goal_spread"].publish(numpy_to_image(spread, stamp, frame_id, encoding="mono8"))
            # the one sample the model places closest to the goal camera: sharp, from the goal's side
            self._gst_pubs["goal_sample"].publish(numpy_to_image(view.consistent_sample, stamp, frame_id))
        self._gst_pubs["markers"].publish(frustum_array(
            [(view.K, size, size, np.linalg.inv(w2c))], frame_id=self.reference_frame, stamp=stamp, ns="goal",
            depth=float(self.p("frustum_depth")), color=GOAL_COLOR))
        lat = time.monotonic() - received
        self.stats["goal"].on_processed(lat, 0.0)

    # ------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        streams = [(self.stats[c], True) for c in self.cameras]
        streams += [(self.stats[k], False) for k in ("reference", "goal", "candidates")]
        ref = self.reference_state()
        if self._worker is not None:
            ref["worker_pending"] = self._worker.pending()
        if self._view_worker is not None and self._view_worker is not self._worker:
            ref["view_worker_pending"] = self._view_worker.pending()
        stamp = self.get_clock().now().to_msg()
        self._gst_pubs["diagnostics"].publish(diagnostic_array(self.get_name(), stamp, streams, ref))


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = GSTNode()
    except ParameterException as e:   # a start-up value out of range or of the wrong type
        print(f"[FATAL] [gst_node]: bad parameter: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.p("autostart"):
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("autostart: configure failed (see the error above)")
                code = 1
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("autostart: activate failed")
                code = 1
        if code == 0:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_activity()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
