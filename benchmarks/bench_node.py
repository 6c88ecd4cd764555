"""gst_node end-to-end latency and the node's own overhead at 640x480.

    .venv/bin/python benchmarks/bench_node.py [--model DIR] [--frames 40] [--rate 2] [--size 640 480]
        [--transport raw|compressed]

Starts gst_node (autostart, one camera) in its own process, publishes --frames images with
camera_info at --rate Hz and prints, per estimate, the end-to-end latency (pose arrival - image
stamp, same machine clock). At the end it prints the node's own per-frame overhead from its
diagnostics: conversion + validation of the Image and publishing of TF / pose / frustum, i.e.
everything but inference (target < 5 ms). `--transport compressed` sends the same frame as a
JPEG (quality 90) on cam0/image_raw/compressed to a node with `image_transport: compressed`, so
the overhead includes decoding it. ROS stays on this machine (localhost, private domain).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "ros_scripts"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model directory (default: the shipped models/gst_small)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--rate", type=float, default=2.0, help="input rate (Hz)")
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    ap.add_argument("--samples", type=int, default=4, help="pose samples per estimate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--transport", choices=("raw", "compressed"), default="raw",
                    help="the node's image_transport: raw Image or JPEG CompressedImage")
    args = ap.parse_args()

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if os.environ.get("ROS_DOMAIN_ID", "") in ("", "0"):
        os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
    from gst_ros.engine.engine import ModelNotFoundError, check_model_dir, default_model_dir

    try:
        model = check_model_dir(args.model or default_model_dir())
    except ModelNotFoundError as e:
        print(f"bench_node: {e}", file=sys.stderr)
        return 2
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from node_harness import Probe, diagnostics_values, rgb_image, start_node, stop_process, write_params
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from gst_ros.geometry import intrinsics_from_fov
    from gst_ros.ros.conversions import K_to_camera_info, numpy_to_image, stamp_to_nanoseconds

    w, h = args.size
    tmp = Path(tempfile.mkdtemp(prefix="gst_bench_node_"))
    # reliable image QoS: 640x480 frames (0.9 MB) exceed the shared-memory segment and best-effort UDP
    # fragments get lost on a busy machine; the benchmark measures the node, not the transport
    params = write_params(tmp / "p.yaml", {"model_dir": str(model), "device": args.device, "autostart": True,
                                           "cameras": ["cam0"], "pose_samples": args.samples,
                                           "candidate_count": 0, "diagnostics_period_s": 0.5,
                                           "image_qos": "reliable", "image_transport": args.transport})
    proc = start_node(params, log_path=tmp / "node.log")
    probe = Probe("gst_bench_probe")
    latencies = []
    try:
        diag = probe.record(DiagnosticArray, "/diagnostics")
        arrivals = {}
        probe.node.create_subscription(PoseWithCovarianceStamped, "gst/cam0/pose",
                                       lambda m: arrivals.setdefault(stamp_to_nanoseconds(m.header.stamp),
                                                                     time.time()), 10)
        info_pub = probe.publisher(CameraInfo, "cam0/camera_info", 5)
        if args.transport == "compressed":
            import cv2
            img_pub = probe.publisher(CompressedImage, "cam0/image_raw/compressed", 5)
            ok, jpeg = cv2.imencode(".jpg", rgb_image(h, w)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise RuntimeError("bench_node: OpenCV could not encode the test frame as JPEG")
            msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())
            msg.header.frame_id = "cam0_optical"
        else:
            img_pub = probe.publisher(Image, "cam0/image_raw", 5)
            msg = numpy_to_image(rgb_image(h, w), frame_id="cam0_optical")
        probe.wait_matched(img_pub, timeout=120, proc=proc)
        info = K_to_camera_info(intrinsics_from_fov(60.0, w, h), w, h, frame_id="cam0_optical")

        def publish():
            msg.header.stamp = info.header.stamp = probe.node.get_clock().now().to_msg()
            info_pub.publish(info)
            img_pub.publish(msg)
            return stamp_to_nanoseconds(msg.header.stamp)

        def warm_up():   # the first estimate includes the model's warm-up: not measured
            if arrivals:
                return True
            publish()
            probe.executor.spin_once(timeout_sec=0.5)
            return bool(arrivals)

        probe.spin_until(warm_up, 300, proc, "the first estimate")
        t_next, sent = time.monotonic(), set()
        for _ in range(args.frames):
            sent.add(publish())
            t_next += 1.0 / args.rate
            while time.monotonic() < t_next:
                probe.executor.spin_once(timeout_sec=max(0.0, t_next - time.monotonic()))
            for ns in sorted((set(arrivals) & sent) - {ns for ns, _ in latencies}):
                latencies.append((ns, arrivals[ns] - ns * 1e-9))
                print(f"frame {len(latencies):3d}  end-to-end latency {latencies[-1][1] * 1e3:8.1f} ms")
        n_diag = len(diag)
        probe.spin_until(lambda: len(diag) >= n_diag + 2, 60, proc, "fresh diagnostics")
        latencies += [(ns, arrivals[ns] - ns * 1e-9) for ns in sorted((set(arrivals) & sent)
                                                                      - {ns for ns, _ in latencies})]
        d = diagnostics_values(diag[-1], "camera cam0")
    finally:
        probe.close()
        stop_process(proc)
    lat = np.array([x for _, x in latencies]) * 1e3
    print(f"\nmodel {model} on {args.device}, {w}x{h} input at {args.rate} Hz, {args.samples} pose samples, "
          f"{args.transport} frames of {len(msg.data) / 1024:.0f} KiB")
    if lat.size:
        print(f"end-to-end latency: mean {lat.mean():.1f} ms, "
              f"p50 {np.percentile(lat, 50):.1f} ms, p90 {np.percentile(lat, 90):.1f} ms "
              f"over {lat.size} estimates")
    print(f"node overhead per frame (conversion + publishing, no inference): {d['overhead_ms_mean']:.2f} ms "
          f"(target < 5 ms); received {d['received']:.0f}, processed {d['processed']:.0f}, "
          f"dropped {d['dropped']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
