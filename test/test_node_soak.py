"""Soak: 2,000 frames at 30 Hz into gst_node (tiny model, separate process). The node's memory
stays bounded and no queue grows: frames the worker cannot keep up with are counted as dropped,
and every received frame is accounted for (processed + dropped + rejected)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "ros_scripts"))

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from engine_fixtures import make_tiny_model  # noqa: E402
from node_harness import Probe, diagnostics_values, rgb_image, rss_kib, start_node, stop_process, write_params  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from gst_ros.ros.conversions import numpy_to_image  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
FRAMES, RATE_HZ, WARMUP = 2000, 30.0, 300
RSS_GROWTH_LIMIT_MIB = 40


def test_soak_2000_frames_bounded_memory_and_no_queue(tmp_path):
    model = make_tiny_model(tmp_path)
    params = write_params(tmp_path / "p.yaml", {
        "model_dir": str(model), "device": "cpu", "autostart": True, "cameras": ["cam0"], "pose_samples": 2,
        "candidate_count": 0, "diagnostics_period_s": 0.5, "image_qos": "reliable", "image_qos_depth": 5})
    proc = start_node(params, log_path=tmp_path / "node.log")
    probe = Probe("gst_soak_probe")
    try:
        diag = probe.record(DiagnosticArray, "/diagnostics")
        pub = probe.publisher(Image, "cam0/image_raw", 5)
        probe.wait_matched(pub, timeout=60, proc=proc)
        msg = numpy_to_image(rgb_image(240, 320), frame_id="cam0_optical")
        t_next, rss_warm = time.monotonic(), None
        for i in range(FRAMES):
            msg.header.stamp = probe.node.get_clock().now().to_msg()
            pub.publish(msg)
            if i == WARMUP:
                rss_warm = rss_kib(proc.pid)
            t_next += 1.0 / RATE_HZ
            while time.monotonic() < t_next:
                probe.executor.spin_once(timeout_sec=max(0.0, t_next - time.monotonic()))
            assert proc.poll() is None, "gst_node died during the soak"

        def settled():
            if not diag:
                return False
            d = diagnostics_values(diag[-1], "camera cam0")
            return (d["received"] >= 0.98 * FRAMES and not d["last_problem"]
                    and d["received"] == d["processed"] + d["dropped"] + d["rejected"])

        probe.spin_until(settled, 60, proc, "every frame accounted for")
        rss_end = rss_kib(proc.pid)
        d = diagnostics_values(diag[-1], "camera cam0")
        ref = diagnostics_values(diag[-1], "reference")
        assert 0.98 * FRAMES <= d["received"] <= FRAMES and d["rejected"] == 0 and d["errors"] == 0
        assert d["processed"] > 50, "the worker must keep estimating"
        assert d["dropped"] > 0, "the worker cannot keep up with 30 Hz: frames must be dropped, not queued"
        assert ref["worker_pending"] <= 1
        assert ref["view_worker_pending"] == 0   # the view worker has its own slots (no goal was sent)
        growth_mib = (rss_end - rss_warm) / 1024
        print(f"soak: processed {d['processed']:.0f}, dropped {d['dropped']:.0f}, "
              f"RSS {rss_warm / 1024:.0f} -> {rss_end / 1024:.0f} MiB, input {d['input_rate_hz']:.1f} Hz, "
              f"overhead {d['overhead_ms_mean']:.2f} ms")
        assert growth_mib < RSS_GROWTH_LIMIT_MIB, f"node RSS grew {growth_mib:.1f} MiB after warm-up"
    finally:
        probe.close()
        stop_process(proc)
