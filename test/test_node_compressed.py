"""gst_node with `image_transport: compressed` over real rclpy (node in its own process, tiny
random model): JPEG frames on <camera>/image_raw/compressed give poses on TF; a corrupt one is
counted by name in the diagnostics and the node keeps estimating; an unknown transport fails
configure by name."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
cv2 = pytest.importorskip("cv2")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "ros_scripts"))

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from engine_fixtures import make_tiny_model  # noqa: E402
from node_harness import Probe, diagnostics_values, rgb_image, start_node, stop_process, write_params  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from gst_ros.ros.conversions import K_to_camera_info  # noqa: E402

pytestmark = pytest.mark.ros

W, H = 64, 48
K0 = np.array([[50.0, 0, (W - 1) / 2], [0, 50.0, (H - 1) / 2], [0, 0, 1]])


def _jpeg(rgb: np.ndarray, sec: int) -> CompressedImage:
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=buf.tobytes())
    msg.header.frame_id = "cam0_optical"
    msg.header.stamp.sec = sec
    return msg


def test_compressed_frames_give_poses_and_bad_ones_are_counted(tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    params = write_params(tmp_path / "params.yaml", {
        "device": "cpu", "autostart": True, "cameras": ["cam0"], "image_transport": "compressed",
        "model_dir": str(model), "candidate_count": 0, "diagnostics_period_s": 0.2,
        "max_frame_age_s": 10.0, "log_throttle_s": 0.0})
    proc = start_node(params, log_path=tmp_path / "node.log")
    probe = Probe()
    try:
        tf = probe.record(TFMessage, "/tf", 100)
        diag = probe.record(DiagnosticArray, "/diagnostics")
        img = probe.publisher(CompressedImage, "cam0/image_raw/compressed")
        info = probe.publisher(CameraInfo, "cam0/camera_info")
        probe.wait_matched(img, timeout=60, proc=proc)
        probe.wait_matched(info, timeout=60, proc=proc)
        # with image_transport compressed the node does not listen on the raw topic
        probe.spin_until(lambda: probe.node.count_subscribers("cam0/image_raw/compressed") > 0, 30, proc,
                         "the compressed subscription")
        assert probe.node.count_subscribers("cam0/image_raw") == 0

        def poses():
            return [t for m in tf for t in m.transforms if t.child_frame_id == "cam0_estimated"]

        sec = [100]

        def send_until(done, bad=None):
            def step():
                if done():
                    return True
                info.publish(K_to_camera_info(K0, W, H, frame_id="cam0_optical"))
                img.publish(_jpeg(rgb_image(H, W, seed=sec[0]), sec[0]))
                if bad is not None:
                    img.publish(bad)
                sec[0] += 1
                for _ in range(5):
                    probe.executor.spin_once(timeout_sec=0.05)
                return done()
            return step

        probe.spin_until(send_until(lambda: len(poses()) >= 2), 90, proc, "poses from compressed frames")
        stamps = {t.header.stamp.sec for t in poses()}
        assert stamps and stamps <= set(range(100, sec[0]))   # each pose carries its frame's stamp

        corrupt = _jpeg(rgb_image(H, W), 0)
        corrupt.data = bytes(corrupt.data)[:60]

        def rejected():
            counts = diagnostics_values(diag[-1], "camera cam0") if diag else {}
            return counts.get("rejected_undecodable", 0) >= 1

        probe.spin_until(send_until(rejected, bad=corrupt), 60, proc, "the corrupt frame counted")
        n = len(poses())
        probe.spin_until(send_until(lambda: len(poses()) > n), 60, proc, "a pose after the corrupt frame")
        assert proc.poll() is None
        assert "could not decode 60 bytes" in (tmp_path / "node.log").read_text()
    finally:
        probe.close()
        stop_process(proc)


def test_unknown_image_transport_fails_configure_by_name(tmp_path):
    params = write_params(tmp_path / "p.yaml", {"device": "cpu", "autostart": True, "cameras": ["cam0"],
                                                "image_transport": "theora",
                                                "model_dir": str(make_tiny_model(tmp_path / "tiny"))})
    proc = start_node(params, ["-r", "__node:=gst_badtransport"], log_path=tmp_path / "node.log")
    assert proc.wait(timeout=120) != 0
    log = (tmp_path / "node.log").read_text()
    assert "image_transport must be one of ('raw', 'compressed'), got 'theora'" in log
