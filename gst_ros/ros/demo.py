"""The demo (`gst demo`, `make demo`): simulated camera -> gst_node -> live rotation error.

The stack (gst_ros.ros.stack: sim_camera_node + gst_node, separate processes) runs with the
shipped small model. The reference is the first frame the demo has ground truth for: as soon as
the simulator's /tf reaches the demo, it calls gst/set_reference, and gst_node takes its latest
frame as the reference (the simulator starts before discovery completes, so the very first
frames' ground truth can be missed). A probe node here listens to
- /tf: the simulator's ground truth world -> sim_camera_optical_frame, i.e. inv(w2c_t) per stamp;
- gst/reference/current: the reference image, stamped with the stamp of the frame it came from;
- gst/camera/pose: the estimate, the camera's optical frame pose in the reference frame.
For each estimate with stamp t the ground-truth relative camera is
relative_pose(w2c_ref, w2c_t) = w2c_t @ inv(w2c_ref) (world = the reference camera's optical
frame, as the node's), and the error is the geodesic angle between its rotation and the estimate's.
Latency = arrival of the estimate - image stamp (both this machine's system clock).

"What will I see?" with the truth beside it: after the last estimate the demo sends gst/goal the
true pose of one of the last frames it received (its ground truth relative to the reference,
normalised as the model's scenes are: the reference camera 1 unit from the point its optical
axis and the other cameras' axes pass nearest, gst_ros.geometry.normalize_scene) and scores the
node's answer on gst/goal_view/image (the expected view) and gst/goal_view/sample (the sample
closest to the goal camera) against that frame, with two baselines: copying the reference, and
copying gst/goal_view/observation, the seen view the node predicted from (with the node's
goal_from_keyframes, the default, the reference or the keyframe nearest the goal).

Outputs in --out (default outputs/demo): frames.csv (one row per estimate), candidates.png (the
reference view and the candidate views the node proposed), goal_view.png (reference | truth from
the goal camera | expected view | most consistent sample | the seen view it was predicted from),
summary.txt.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gst_ros.ros.params import BY_NAME
from gst_ros.ros.stack import CAMERA, Stack, node_parameters, ros_env, sim_parameters

SIM_CAMERA_FRAME = "sim_camera_optical_frame"
SIM_WORLD_FRAME = "world"
FRAMES_KEPT = 10   # simulator images the probe keeps (the newest), for the goal view's truth


@dataclass
class DemoConfig:
    model_dir: str = ""            # empty = the shipped model (EngineConfig default)
    frames: int = 30               # stop after this many estimates
    rate_hz: float = 5.0           # simulated camera rate
    size: int = 256                # simulated image size (square)
    samples: int = 4               # sampled poses per estimate
    candidates: int = 4            # candidate views proposed from the reference
    device: str = "auto"
    seed: int = 0
    out_dir: str = "outputs/demo"
    timeout_s: float = 900.0       # give up when no new estimate arrives for this long


def resolve_model(model_dir: str) -> Path:
    """The model directory to use; raises ModelNotFoundError (which says how to get one)."""
    from gst_ros.engine.engine import check_model_dir, default_model_dir

    return check_model_dir(model_dir or default_model_dir())


def pose_errors(w2c_ref_gt: np.ndarray, w2c_gt: np.ndarray, w2c_est: np.ndarray) -> tuple[float, float]:
    """(rotation error deg, camera-direction error deg) of an estimate.

    w2c_ref_gt, w2c_gt: ground-truth world-to-camera (4,4) of the reference and the current frame
    (simulator world, OpenCV optical axes). w2c_est: the estimate, reference-frame-to-camera (the
    node's convention: world = the reference camera's optical frame; translation up to scale).
    The direction error compares the camera centres seen from the reference camera (scale-free);
    NaN when either centre is at the reference (no direction)."""
    from gst_ros.geometry import camera_center, relative_pose, rotation_error_deg

    rel_gt = relative_pose(w2c_ref_gt, w2c_gt)
    rot = float(rotation_error_deg(w2c_est[:3, :3], rel_gt[:3, :3]))
    c_gt, c_est = camera_center(rel_gt), camera_center(w2c_est)
    n_gt, n_est = np.linalg.norm(c_gt), np.linalg.norm(c_est)
    if n_gt < 1e-6 or n_est < 1e-6:
        return rot, math.nan
    cos = float(np.clip(c_gt @ c_est / (n_gt * n_est), -1.0, 1.0))
    return rot, math.degrees(math.acos(cos))


def baseline_deg(w2c_ref_gt: np.ndarray, w2c_gt: np.ndarray) -> float:
    """Angle (deg) of the true rotation between the reference and the current frame (ground-truth
    world-to-camera (4,4) each, OpenCV optical axes): how far the camera has turned, the
    difficulty of the estimate."""
    from gst_ros.geometry import relative_pose, rotation_error_deg

    return float(rotation_error_deg(relative_pose(w2c_ref_gt, w2c_gt)[:3, :3], np.eye(3)))


def summarize(rot_err, latency_s) -> dict:
    """Median / mean rotation error, accuracy at 15 and 30 deg, latency percentiles (ms)."""
    from gst_ros.geometry import accuracy_at

    e = np.asarray(rot_err, dtype=np.float64)
    lat = np.asarray(latency_s, dtype=np.float64) * 1e3
    acc = accuracy_at(e, (15.0, 30.0))
    return {"frames": int(e.size), "rot_err_median_deg": float(np.median(e)),
            "rot_err_mean_deg": float(e.mean()),
            "acc_at_15": acc[15.0], "acc_at_30": acc[30.0], "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p90_ms": float(np.percentile(lat, 90)), "latency_max_ms": float(lat.max())}


def montage(reference: np.ndarray | None, views: list[np.ndarray], tile: int = 256) -> np.ndarray:
    """One row: the reference view (left, red border) then the candidate views, each resized to
    tile x tile (nearest), separated by white gaps. Returns (tile+8, W, 3) uint8 RGB."""
    from PIL import Image as PILImage

    imgs = ([reference] if reference is not None else []) + list(views)
    if not imgs:
        raise ValueError("montage: no images")
    gap = 8
    out = np.full((tile + 2 * gap, len(imgs) * (tile + gap) + gap, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        x = gap + i * (tile + gap)
        pil = PILImage.fromarray(np.asarray(im, np.uint8))
        small = np.asarray(pil.resize((tile, tile), PILImage.NEAREST))
        if i == 0 and reference is not None:
            out[gap - 4:gap + tile + 4, x - 4:x + tile + 4] = (220, 30, 30)
        out[gap:gap + tile, x:x + tile] = small
    return out


def goal_from_ground_truth(w2c_ref_gt: np.ndarray, w2c_goal_gt: np.ndarray, w2c_others_gt) -> np.ndarray:
    """(4,4) w2c of the goal camera in the model's frame and scale: relative to the reference
    camera (world = the reference optical frame, OpenCV axes), translation in units of the
    reference camera's distance to the scene centre, the point nearest every camera's optical
    axis (reference, goal and `w2c_others_gt` (N,4,4), all world-to-camera in the simulator's
    world; gst_ros.geometry.normalize_scene). GeometryError when the axes fix no centre."""
    from gst_ros.geometry import normalize_scene

    others = np.asarray(w2c_others_gt, dtype=np.float64).reshape(-1, 4, 4)
    rel, _ = normalize_scene(np.concatenate([np.stack([w2c_ref_gt, w2c_goal_gt]), others]), mode="center")
    return rel[1]


class _Probe:
    """The demo's listener (its own rclpy context)."""

    def __init__(self, candidates: int):
        import rclpy
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger
        from tf2_msgs.msg import TFMessage

        from gst_ros.ros.conversions import image_to_numpy, stamp_to_nanoseconds, transform_stamped_to_w2c
        from gst_ros.ros.qos import image_qos, latched_qos, output_qos, tf_qos

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("gst_demo_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.gt: dict[int, np.ndarray] = {}           # stamp ns -> world-to-camera
        self.poses: list = []
        self.reference = None
        self.candidates: dict[int, np.ndarray] = {}
        self.frames: dict[int, object] = {}           # stamp ns -> the simulator's Image message (the
                                                      # last few; converted only for the goal view)
        self.goal_view: dict[str, np.ndarray] = {}     # "image" / "sample" / "observation" -> the
                                                       # node's answer and the view it came from
        self._ns, self._to_w2c, self._to_rgb = stamp_to_nanoseconds, transform_stamped_to_w2c, image_to_numpy

        def on_tf(msg):
            for t in msg.transforms:
                if t.header.frame_id == SIM_WORLD_FRAME and t.child_frame_id == SIM_CAMERA_FRAME:
                    self.gt[self._ns(t.header.stamp)] = self._to_w2c(t)

        def on_pose(msg):
            self.poses.append((msg, time.time()))

        def on_candidate(i):
            return lambda msg: self.candidates.__setitem__(i, self._to_rgb(msg))

        def on_frame(msg):
            self.frames[self._ns(msg.header.stamp)] = msg
            for old in sorted(self.frames)[:-FRAMES_KEPT]:
                del self.frames[old]

        def on_goal_view(kind):
            return lambda msg: self.goal_view.__setitem__(kind, self._to_rgb(msg))

        n = self.node
        self._set_reference = n.create_client(Trigger, "gst/set_reference")
        self._request, self._request_sent = None, 0.0
        n.create_subscription(TFMessage, "/tf", on_tf, tf_qos())
        n.create_subscription(PoseWithCovarianceStamped, f"gst/{CAMERA}/pose", on_pose, output_qos())
        n.create_subscription(Image, "gst/reference/current", lambda m: setattr(self, "reference", m),
                              latched_qos())
        for i in range(candidates):
            n.create_subscription(Image, f"gst/candidate_{i}/image", on_candidate(i), latched_qos())
        n.create_subscription(Image, f"{CAMERA}/image_raw", on_frame, image_qos("sensor_data", 5))
        for kind in ("image", "sample", "observation"):
            n.create_subscription(Image, f"gst/goal_view/{kind}", on_goal_view(kind), output_qos())
        self.goal = n.create_publisher(PoseStamped, "gst/goal", output_qos())

    def request_reference(self) -> None:
        """Ask gst_node (gst/set_reference) to take its latest frame as the reference; re-sent
        every 2 s until a successful reply (the node may still be loading its model)."""
        if self._request is not None and self._request.done():
            reply = self._request.result()
            if reply is not None and reply.success:
                return
            self._request = None
        if not self._set_reference.service_is_ready() or time.monotonic() - self._request_sent < 2.0:
            return
        if self._request is not None:
            self._set_reference.remove_pending_request(self._request)
        from std_srvs.srv import Trigger

        self._request = self._set_reference.call_async(Trigger.Request())
        self._request_sent = time.monotonic()

    def ask_goal_view(self, ref_ns: int, reference_frame: str, timeout_s: float = 120.0):
        """Send gst/goal the true pose of the newest frame with ground truth after the reference
        (goal_from_ground_truth) and wait for the node's expected view, most consistent sample
        and the seen view it predicted them from. Returns (goal frame stamp ns, its image, turned
        deg) or None when no such frame is here or the scene centre is undetermined; the answer
        lands in self.goal_view."""
        from geometry_msgs.msg import PoseStamped

        from gst_ros.geometry import GeometryError
        from gst_ros.ros.conversions import stamp_from_nanoseconds, w2c_to_pose

        stamps = [s for s in sorted(self.frames) if s > ref_ns and s in self.gt]
        if not stamps or ref_ns not in self.gt:
            return None
        ns = stamps[-1]
        frame = self._to_rgb(self.frames[ns])   # kept now: newer frames push it out while the node answers
        others = [self.gt[s] for s in sorted(self.gt) if s not in (ref_ns, ns)]
        try:
            goal = goal_from_ground_truth(self.gt[ref_ns], self.gt[ns], others)
        except GeometryError:
            return None
        msg = PoseStamped()
        msg.header.frame_id, msg.header.stamp = reference_frame, stamp_from_nanoseconds(ns)
        msg.pose = w2c_to_pose(goal)
        end = time.monotonic() + timeout_s
        while self.goal.get_subscription_count() == 0 and time.monotonic() < end:
            self.spin(0.1)
        self.goal_view.clear()
        self.goal.publish(msg)
        while len(self.goal_view) < 3 and time.monotonic() < end:
            self.spin(0.1)
        return ns, frame, baseline_deg(self.gt[ref_ns], self.gt[ns])

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.05, end - time.monotonic())))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)


def goal_view_report(goal, probe: _Probe, out: Path) -> str | None:
    """Score the node's answer to the demo's goal (ask_goal_view) against the simulator's frame
    from that camera, at the model resolution: PSNR of the expected view and of the most
    consistent sample, and of two copies as the prediction: the reference, and the seen view the
    node predicted from (goal_from_keyframes: the reference or the keyframe nearest the goal);
    writes goal_view.png (reference | truth | expected view | most consistent sample | the view
    predicted from). None (after saying why) when there was no goal or no answer."""
    from PIL import Image as PILImage

    from gst_ros.geometry import intrinsics_from_fov
    from gst_ros.preprocess import center_crop_resize, psnr_uint8
    from gst_ros.ros.conversions import image_to_numpy

    if goal is None or "image" not in probe.goal_view or probe.reference is None:
        print("[demo] no goal view (no frame with ground truth, or no answer from gst_node)", file=sys.stderr)
        return None
    _, frame, turned = goal
    expected = probe.goal_view["image"]
    size = expected.shape[0]

    def at_model_size(img):   # the node's centre crop and resize (the intrinsics are not used)
        return center_crop_resize(img, intrinsics_from_fov(49.1, img.shape[1], img.shape[0]), size)[0]

    truth, ref = at_model_size(frame), at_model_size(image_to_numpy(probe.reference))
    source = at_model_size(probe.goal_view["observation"]) if "observation" in probe.goal_view else None
    views = [truth, expected] + ([probe.goal_view["sample"]] if "sample" in probe.goal_view else [])
    views += [source] if source is not None else []
    PILImage.fromarray(montage(ref, views)).save(out / "goal_view.png")
    copied = ""
    if source is not None:   # the node's own observation: the reference, a keyframe, or the goal's frame
        which = ("the reference" if np.array_equal(source, ref)
                 else "the goal's own frame, kept as a keyframe" if np.array_equal(source, truth)
                 else "a keyframe")
        copied = f", copying the view it was predicted from {psnr_uint8(source, truth):.2f} dB ({which})"
    text = (f"goal view from a camera turned {turned:.0f} deg from the reference: PSNR expected view "
            f"{psnr_uint8(expected, truth):.2f} dB"
            + (f", most consistent sample {psnr_uint8(probe.goal_view['sample'], truth):.2f} dB"
               if "sample" in probe.goal_view else "")
            + f", copying the reference {psnr_uint8(ref, truth):.2f} dB" + copied)
    print(f"[demo] {text}\n[demo] wrote {out / 'goal_view.png'} (reference in red | truth | expected view | "
          f"most consistent sample | the view it was predicted from)")
    return text


def run_demo(cfg: DemoConfig) -> int:
    from gst_ros.engine.engine import ModelNotFoundError
    from gst_ros.ros.conversions import image_to_numpy, pose_to_w2c, stamp_to_nanoseconds

    try:
        model = resolve_model(cfg.model_dir)
    except ModelNotFoundError as e:
        print(f"gst demo: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = ros_env()
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE"):   # this process's probe joins too
        os.environ[key] = env[key]
    print(f"[demo] model {model}; ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, "
          f"discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']}; logs in {out}")
    node = node_parameters({"model_dir": str(model), "device": cfg.device, "autostart": True,
                            "cameras": [CAMERA],
                            "pose_samples": cfg.samples, "candidate_count": cfg.candidates,
                            "candidate_period_s": 0.0, "reference_from_first_frame": False})
    sim = sim_parameters(cfg.rate_hz, cfg.size, cfg.size, cfg.seed)
    rows, rot_errs, latencies, baselines, goal = [], [], [], [], None
    probe = _Probe(cfg.candidates)
    try:
        with Stack(node, sim, out, env) as stack:
            print(f"[demo] waiting for {cfg.frames} estimates (the model loads first; Ctrl-C stops)")
            last_progress, done_idx = time.monotonic(), 0
            while len(rows) < cfg.frames:
                probe.spin(0.1)
                if stack.dead():
                    name, code = stack.dead()[0]
                    print(f"[demo] {name} exited with {code}:\n{stack.log_tail(name)}", file=sys.stderr)
                    return 1
                if time.monotonic() - last_progress > cfg.timeout_s:
                    print(f"[demo] no estimate for {cfg.timeout_s:.0f} s; gst_node log:\n"
                          f"{stack.log_tail('gst_node')}", file=sys.stderr)
                    return 1
                if probe.reference is None:
                    if probe.gt:
                        probe.request_reference()
                    continue
                ref_ns = stamp_to_nanoseconds(probe.reference.header.stamp)
                while done_idx < len(probe.poses) and len(rows) < cfg.frames:
                    msg, arrived = probe.poses[done_idx]
                    ns = stamp_to_nanoseconds(msg.header.stamp)
                    if ns <= ref_ns:   # estimated against an earlier reference, or the reference itself
                        done_idx += 1
                        continue
                    if ns not in probe.gt or ref_ns not in probe.gt:
                        break   # ground truth not here yet: retry after the next spin
                    done_idx += 1
                    rot, direction = pose_errors(probe.gt[ref_ns], probe.gt[ns], pose_to_w2c(msg.pose.pose))
                    latency = arrived - ns * 1e-9
                    turned = baseline_deg(probe.gt[ref_ns], probe.gt[ns])
                    baselines.append(turned)
                    rows.append({"frame": len(rows), "stamp_s": f"{ns * 1e-9:.3f}",
                                 "baseline_deg": f"{turned:.3f}",
                                 "rot_err_deg": f"{rot:.3f}", "direction_err_deg": f"{direction:.3f}",
                                 "latency_ms": f"{latency * 1e3:.1f}"})
                    rot_errs.append(rot)
                    latencies.append(latency)
                    last_progress = time.monotonic()
                    print(f"[demo] frame {len(rows):3d}/{cfg.frames}  turned {turned:6.1f} deg  "
                          f"rotation error {rot:7.2f} deg  "
                          f"camera direction error {direction:7.2f} deg  latency {latency * 1e3:8.1f} ms",
                          flush=True)
            # candidate views were computed once, when the first frame became the reference
            deadline = time.monotonic() + 120
            while len(probe.candidates) < cfg.candidates and time.monotonic() < deadline and not stack.dead():
                probe.spin(0.2)
            goal = probe.ask_goal_view(ref_ns, BY_NAME["reference_frame"].default)
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
    finally:
        probe.close()
    if rows:
        with open(out / "frames.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if probe.candidates or probe.reference is not None:
        from PIL import Image as PILImage

        ref = image_to_numpy(probe.reference) if probe.reference is not None else None
        views = [probe.candidates[i] for i in sorted(probe.candidates)]
        PILImage.fromarray(montage(ref, views)).save(out / "candidates.png")
        print(f"[demo] wrote {out / 'candidates.png'} (reference in red, then {len(views)} candidate views)")
    goal_text = goal_view_report(goal, probe, out)
    if not rows:
        print("[demo] no estimates", file=sys.stderr)
        return 1
    s = summarize(rot_errs, latencies)
    turned = f"turned {min(baselines):.0f}-{max(baselines):.0f} deg from the reference"
    text = (f"frames {s['frames']} ({turned}): "
            f"rotation error median {s['rot_err_median_deg']:.2f} deg, "
            f"mean {s['rot_err_mean_deg']:.2f} deg; accuracy @15 {100 * s['acc_at_15']:.1f}%, "
            f"@30 {100 * s['acc_at_30']:.1f}%; latency p50 {s['latency_p50_ms']:.0f} ms, "
            f"p90 {s['latency_p90_ms']:.0f} ms, max {s['latency_max_ms']:.0f} ms")
    (out / "summary.txt").write_text(text + "\n" + (goal_text + "\n" if goal_text else ""))
    print(f"[demo] {text}\n[demo] per-frame log: {out / 'frames.csv'}")
    return 0 if len(rows) >= cfg.frames else 1
