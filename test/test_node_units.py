"""Pieces of gst_node tested without processes: the latest-frame worker, frustum geometry,
translation / covariance scaling, problem classification, the demo's error maths."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rclpy")

from gst_ros.geometry import GeometryError, intrinsics_from_fov, invert_pose, look_at, project_points  # noqa: E402
from gst_ros.ros.demo import (  # noqa: E402
    baseline_deg,
    goal_from_ground_truth,
    montage,
    pose_errors,
    summarize,
)
from gst_ros.ros.gst_node import classify_problem, scale_covariance, scale_translation  # noqa: E402
from gst_ros.ros.markers import frustum_array, frustum_segments  # noqa: E402
from gst_ros.ros.worker import LatestItemWorker  # noqa: E402


def test_worker_keeps_only_the_latest_item_and_counts_drops():
    gate, seen = threading.Event(), []

    def handler(key, item):
        gate.wait(5)
        seen.append((key, item))

    w = LatestItemWorker(handler)
    w.start()
    try:
        w.put("cam", 0)                     # taken at once, blocks on the gate
        while not w.busy():
            pass
        replaced = [w.put("cam", i) for i in range(1, 6)]
        assert replaced == [False, True, True, True, True]
        assert w.pending() == 1 and w.dropped("cam") == 4
        gate.set()
        assert w.wait_idle(5)
        assert seen == [("cam", 0), ("cam", 5)]
        assert w.handled("cam") == 2
    finally:
        assert w.stop()


def test_worker_is_round_robin_and_survives_errors():
    gate, seen, errors = threading.Event(), [], []

    def handler(key, item):
        gate.wait(5)
        if item == "bad":
            raise ValueError("bad item")
        seen.append(key)

    w = LatestItemWorker(handler, on_error=lambda k, i, e: errors.append((k, str(e))))
    w.start()
    try:
        w.put("a", "first")
        while not w.busy():
            pass
        w.put("a", "bad")
        w.put("b", "ok")
        w.put("c", "ok")
        gate.set()
        assert w.wait_idle(5)
        w.put("a", "again")
        assert w.wait_idle(5)
        assert seen == ["a", "b", "c", "a"]   # after serving a, b and c come before a again
        assert errors == [("a", "bad item")] and w.running
    finally:
        assert w.stop()
    assert not w.running


def test_frustum_corners_project_to_the_image_corners():
    K = intrinsics_from_fov(60.0, 64, 48)
    w2c = look_at([1.0, -2.0, 0.5], [0.0, 0.0, 0.2])
    seg = frustum_segments(K, 64, 48, invert_pose(w2c), depth=0.7)
    assert seg.shape == (20, 3)
    centre = -w2c[:3, :3].T @ w2c[:3, 3]
    assert np.allclose(seg[0::2][:4], centre)          # four lines from the camera centre
    uv, depth = project_points(K, w2c, seg[1:8:2])       # their other ends: the corners
    assert np.allclose(uv, [[-0.5, -0.5], [63.5, -0.5], [63.5, 47.5], [-0.5, 47.5]], atol=1e-9)
    assert np.allclose(depth, 0.7)
    uv_tip, _ = project_points(K, w2c, seg[17:18])
    assert uv_tip[0, 1] < -0.5                          # the "up" marker is above the image


def test_frustum_array_deletes_stale_ids_and_rejects_bad_input():
    K = intrinsics_from_fov(50.0, 32, 32)
    arr = frustum_array([(K, 32, 32, np.eye(4))], frame_id="ref", stamp=_zero(), ns="c", depth=0.1,
                        color=(1, 0, 0, 1), max_markers=3)
    assert [(m.id, m.action) for m in arr.markers] == [(0, 0), (1, 2), (2, 2)]   # ADD=0, DELETE=2
    with pytest.raises(ValueError, match="non-finite"):
        frustum_segments(np.full((3, 3), np.nan), 32, 32, np.eye(4), 0.1)
    with pytest.raises(ValueError, match="positive"):
        frustum_segments(K, 32, 32, np.eye(4), 0.0)


def _zero():
    from builtin_interfaces.msg import Time

    return Time()


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 100.0), st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_scaling_scales_the_camera_centre_and_position_covariance(scale, eye):
    w2c = look_at(np.array(eye) + [5.0, 0.0, 0.0], [0.0, 0.0, 0.0])   # never along the up axis
    scaled = scale_translation(w2c, scale)
    c, cs = -w2c[:3, :3].T @ w2c[:3, 3], -scaled[:3, :3].T @ scaled[:3, 3]
    assert np.allclose(cs, scale * c) and np.array_equal(scaled[:3, :3], w2c[:3, :3])
    A = np.random.default_rng(0).normal(size=(6, 6))
    cov = scale_covariance(A @ A.T + np.eye(6), scale)
    base = A @ A.T + np.eye(6)
    assert np.allclose(cov[:3, :3], base[:3, :3] * scale**2)
    assert np.allclose(cov[3:, 3:], base[3:, 3:]) and np.allclose(cov[:3, 3:], base[:3, 3:] * scale)


def test_classify_problem_names_each_bad_image_kind():
    assert classify_problem("image: unsupported encoding 'yuv422'; expected one of [...]") == "encoding"
    assert classify_problem("image: data has 17 bytes but step*height = 9*2 = 18") == "size"
    assert classify_problem("image: step 8 is smaller than width*bytes_per_pixel = 9 (encoding)") == "size"
    assert classify_problem("image: empty data for a 3x2 'rgb8' image") == "empty"
    assert classify_problem("image: 500x500 = 250000 pixels exceeds the limit of 1000 pixels") == "oversized"
    assert classify_problem("compressed image: could not decode 60 bytes of format 'jpeg' "
                            "(corrupt or truncated data)") == "undecodable"
    assert classify_problem("compressed image: unsupported format 'tiff'; expected JPEG or PNG") == "encoding"
    assert classify_problem("compressed image: format '16UC1; compressedDepth png' is a depth stream "
                            "(compressedDepth), not a colour image") == "encoding"
    assert classify_problem("compressed image: empty data (format 'jpeg')") == "empty"
    assert classify_problem("image: a 'yuv422' image needs an even width (two pixels share U and V), "
                            "got 3") == "size"


def test_demo_pose_errors_follow_the_reference_frame_convention():
    w2c_ref = look_at([0.0, -2.0, 0.5], [0.0, 0.0, 0.0])
    w2c_t = look_at([1.5, -1.5, 0.7], [0.0, 0.0, 0.0])
    rel = w2c_t @ np.linalg.inv(w2c_ref)            # the camera in the reference camera's frame
    rot, direction = pose_errors(w2c_ref, w2c_t, scale_translation(rel, 3.0))   # scale does not matter
    assert rot == pytest.approx(0.0, abs=1e-5) and direction == pytest.approx(0.0, abs=1e-5)
    a = math.radians(20.0)
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    wrong = rel.copy()
    wrong[:3, :3] = Rz @ rel[:3, :3]
    assert pose_errors(w2c_ref, w2c_t, wrong)[0] == pytest.approx(20.0, abs=1e-6)
    # the world-frame mistake (using w2c_t itself) gives a large error here
    assert pose_errors(w2c_ref, w2c_t, w2c_t)[0] > 30.0
    # how far the camera turned: the true relative rotation's angle, whatever the world frame
    assert baseline_deg(w2c_ref, w2c_ref) == pytest.approx(0.0, abs=1e-5)
    spun = np.eye(4)
    spun[:3, :3] = Rz
    assert baseline_deg(w2c_ref, spun @ w2c_ref) == pytest.approx(20.0, abs=1e-6)


def test_demo_summary_and_montage():
    s = summarize([5.0, 10.0, 20.0, 40.0], [0.1, 0.2, 0.3, 0.4])
    assert s["acc_at_15"] == 0.5 and s["acc_at_30"] == 0.75 and s["rot_err_median_deg"] == 15.0
    assert s["latency_p50_ms"] == pytest.approx(250.0)
    m = montage(np.zeros((32, 32, 3), np.uint8), [np.full((32, 32, 3), 200, np.uint8)] * 2, tile=64)
    assert m.shape == (64 + 16, 3 * 72 + 8, 3) and m.dtype == np.uint8
    assert (m[8:72, 8:72] == 0).all() and (m[8:72, 80:144] == 200).all()
    assert tuple(m[5, 40]) == (220, 30, 30)            # the reference's red border


def test_demo_goal_is_the_true_camera_in_the_models_frame_and_scale():
    """Cameras on an orbit of radius 2.5 around (1, 2, 0): the goal is the true relative camera
    with translations in units of the reference's distance to that centre (the model's scale)."""
    center = np.array([1.0, 2.0, 0.0])
    ring = [center + 2.5 * np.array([math.cos(a), math.sin(a), 0.3]) / np.linalg.norm([1, 0, 0.3])
            for a in np.radians([0, 40, 75, 130, 200])]
    w2c = [look_at(c, center) for c in ring]
    goal = goal_from_ground_truth(w2c[0], w2c[2], w2c[1:2] + w2c[3:])
    rel = w2c[2] @ np.linalg.inv(w2c[0])
    np.testing.assert_allclose(goal[:3, :3], rel[:3, :3], atol=1e-9)
    np.testing.assert_allclose(goal[:3, 3], rel[:3, 3] / 2.5, atol=1e-9)
    # the scene centre sits 1 unit in front of the reference camera, and 1 unit from the goal camera
    np.testing.assert_allclose(goal[:3, :3] @ [0.0, 0.0, 1.0] + goal[:3, 3], [0.0, 0.0, 1.0], atol=1e-9)
    with pytest.raises(GeometryError):   # parallel optical axes fix no centre
        goal_from_ground_truth(np.eye(4), np.eye(4), np.empty((0, 4, 4)))


def test_stream_stats_count_chained_estimates_and_keyframes():
    from gst_ros.ros.diagnostics import StreamStats

    s = StreamStats("camera cam0")
    s.on_tracked(True, 2)
    s.on_tracked(False, 3)
    s.on_tracked(True, 3)
    snap = s.snapshot()
    assert (snap["chained"], snap["keyframes"]) == (2, 3)


def test_stream_stats_frames_add_up_and_camera_info_is_counted_apart():
    """Every received frame lands in exactly one of processed / dropped (replaced, stale,
    no_reference) / rejected / errors; a rejected camera_info is not a frame and is counted apart,
    yet still turns the stream's status to WARN."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from gst_ros.ros.diagnostics import StreamStats, stream_status

    s = StreamStats("camera cam0")
    for _ in range(7):
        s.on_received()
    for reason in ("replaced", "stale", "no_reference", "no_reference"):
        s.on_dropped(reason)
    s.on_rejected("encoding", "image: unsupported encoding 'yuv420'")
    s.on_processed(0.1, 0.01)
    s.on_error("RuntimeError: boom")
    s.on_rejected("camera_info", "camera_info: K: contains NaN or inf", camera_info=True)
    snap = s.snapshot()
    counts = [snap[k] for k in ("dropped", "dropped_no_reference", "rejected", "camera_info_rejected")]
    assert counts == [4, 2, 1, 1]
    assert snap["received"] == snap["processed"] + snap["dropped"] + snap["rejected"] + snap["errors"]
    assert snap["rejected_camera_info"] == 1 and snap["rejected_encoding"] == 1
    with pytest.raises(ValueError, match="unknown drop reason"):
        s.on_dropped("late")
    only_info = StreamStats("camera cam1")
    only_info.on_received()
    only_info.on_rejected("camera_info", "camera_info: K: contains NaN or inf", camera_info=True)
    assert stream_status("gst", only_info, expect_input=True).level == DiagnosticStatus.WARN


def test_workers_asked_to_stop_together_discard_waiting_items():
    """The node asks every worker to stop before it waits for any (one shared deadline): a
    worker asked to stop finishes the item in hand, drops what waits, and joins."""
    gate, seen = threading.Event(), []

    def handler(key, item):
        gate.wait(5)
        seen.append((key, item))

    workers = [LatestItemWorker(handler, name=f"w{i}") for i in range(2)]
    for w in workers:
        w.start()
        w.put("x", w.name)
        w.put("y", "waiting")
    while not all(w.busy() for w in workers):
        pass
    for w in workers:
        w.request_stop()
        assert w.pending() == 0 and w.running      # waiting items dropped; the item in hand goes on
    gate.set()
    assert all(w.stop(timeout=5) for w in workers)
    assert sorted(seen) == [("x", "w0"), ("x", "w1")] and not any(w.running for w in workers)
    assert [w.name for w in workers] == ["w0", "w1"]
