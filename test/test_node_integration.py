"""gst_node over real rclpy, node in its own process (tiny random model): images + camera_info
in; TF, pose with covariance, candidate views, markers, goal views, diagnostics out; every bad
message kind counted while the node keeps running; reference topic / service; lifecycle."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "ros_scripts"))

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from engine_fixtures import make_tiny_model  # noqa: E402
from geometry_msgs.msg import PoseArray, PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from node_harness import (  # noqa: E402
    Probe,
    diagnostics_values,
    latched,
    rgb_image,
    start_node,
    stop_process,
    write_params,
)
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from gst_ros.ros.conversions import K_to_camera_info, numpy_to_image  # noqa: E402

pytestmark = pytest.mark.ros

W, H = 64, 48
K0 = np.array([[50.0, 0, (W - 1) / 2], [0, 50.0, (H - 1) / 2], [0, 0, 1]])
BASE_PARAMS = {
    "device": "cpu", "autostart": True, "cameras": ["cam0", "cam1"], "estimated_frames": ["", "cam1_gst"],
    "translation_scale": 2.0, "candidate_count": 2, "candidate_period_s": 0.0, "pose_samples": 2,
    "max_image_pixels": 200000, "diagnostics_period_s": 0.2, "max_frame_age_s": 10.0, "log_throttle_s": 0.0,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def running(model_dir, tmp_path_factory):
    """(probe, node process, recorded topics, publishers) for an autostarted node."""
    tmp = tmp_path_factory.mktemp("node")
    params = write_params(tmp / "params.yaml", {**BASE_PARAMS, "model_dir": str(model_dir)})
    proc = start_node(params, log_path=tmp / "node.log")
    probe = Probe()
    try:
        rec = {
            "tf": probe.record(TFMessage, "/tf", 100),
            "tf_static": probe.record(TFMessage, "/tf_static", latched()),
            "pose0": probe.record(PoseWithCovarianceStamped, "gst/cam0/pose"),
            "pose1": probe.record(PoseWithCovarianceStamped, "gst/cam1/pose"),
            "cand_image": probe.record(Image, "gst/candidate_0/image", latched()),
            "cand_info": probe.record(CameraInfo, "gst/candidate_0/camera_info", latched()),
            "cand_poses": probe.record(PoseArray, "gst/candidates/poses"),
            "markers": probe.record(MarkerArray, "gst/markers"),
            "goal_image": probe.record(Image, "gst/goal_view/image"),
            "goal_info": probe.record(CameraInfo, "gst/goal_view/camera_info"),
            "goal_spread": probe.record(Image, "gst/goal_view/spread"),
            "goal_sample": probe.record(Image, "gst/goal_view/sample"),
            "goal_observation": probe.record(Image, "gst/goal_view/observation"),
            "diag": probe.record(DiagnosticArray, "/diagnostics"),
        }
        pubs = {
            "img0": probe.publisher(Image, "cam0/image_raw"),
            "info0": probe.publisher(CameraInfo, "cam0/camera_info"),
            "img1": probe.publisher(Image, "cam1/image_raw"),
            "goal": probe.publisher(PoseStamped, "gst/goal"),
            "ref": probe.publisher(Image, "gst/reference/image", latched()),
        }
        for name in ("img0", "info0", "img1", "goal"):
            probe.wait_matched(pubs[name], timeout=60, proc=proc)
        yield probe, proc, rec, pubs, tmp / "node.log"
    finally:
        probe.close()
        stop_process(proc)


def _stamp(msg, sec: int):
    msg.header.stamp.sec = sec
    return msg


def _send_frames(probe, proc, pubs, first_sec: int, until, what: str, camera: str = "cam0",
                 frame_id: str = "cam0_optical", timeout: float = 60.0):
    """Publish cam frames (and cam0's camera_info) every 0.25 s until `until()` holds."""
    sent = []
    sec = [first_sec]

    def step():
        if until():
            return True
        if camera == "cam0":
            pubs["info0"].publish(K_to_camera_info(K0, W, H, frame_id=frame_id))
        img = numpy_to_image(rgb_image(H, W, seed=sec[0]), frame_id=frame_id)
        pubs["img0" if camera == "cam0" else "img1"].publish(_stamp(img, sec[0]))
        sent.append(sec[0])
        sec[0] += 1
        for _ in range(5):
            probe.executor.spin_once(timeout_sec=0.05)
        return until()

    probe.spin_until(step, timeout, proc, what)
    return sent


def _transforms(msgs, child=None):
    return [t for m in msgs for t in m.transforms if child is None or t.child_frame_id == child]


def _latest_diag(rec, suffix):
    return diagnostics_values(rec["diag"][-1], suffix)


def test_images_in_pose_tf_candidates_markers_out(running):
    probe, proc, rec, pubs, _ = running
    sent = _send_frames(probe, proc, pubs, 100,
                        lambda: _transforms(rec["tf"], "cam0_estimated") and rec["pose0"],
                        "TF reference -> cam0_estimated")
    t = _transforms(rec["tf"], "cam0_estimated")[0]
    assert t.header.frame_id == "gst_reference"
    assert t.header.stamp.sec in sent, "TF must carry the input image's stamp"
    pose = next(p for p in rec["pose0"] if p.header.stamp.sec == t.header.stamp.sec)
    assert pose.header.frame_id == "gst_reference"
    tr, pp = t.transform.translation, pose.pose.pose.position
    assert np.allclose([tr.x, tr.y, tr.z], [pp.x, pp.y, pp.z], atol=1e-9)
    q = t.transform.rotation
    assert math.isclose(q.x**2 + q.y**2 + q.z**2 + q.w**2, 1.0, rel_tol=1e-6)
    cov = np.array(pose.pose.covariance).reshape(6, 6)
    assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0), "covariance must be SPD"

    # candidate views: recomputed once when the first frame became the reference
    probe.spin_until(lambda: all(rec[k] for k in ("cand_image", "cand_info", "cand_poses", "tf_static")),
                     60, proc, "candidate views")
    img, info = rec["cand_image"][-1], rec["cand_info"][-1]
    assert (img.height, img.width, img.encoding, img.header.frame_id) == (32, 32, "rgb8", "gst_candidate_0")
    assert len(img.data) == 32 * 32 * 3
    assert (info.width, info.height) == (32, 32) and info.k[0] > 0
    assert info.header.frame_id == "gst_candidate_0"
    static = {t.child_frame_id: t for t in rec["tf_static"][-1].transforms}
    assert set(static) == {"gst_candidate_0", "gst_candidate_1"}
    assert all(t.header.frame_id == "gst_reference" for t in static.values())
    poses = rec["cand_poses"][-1]
    assert poses.header.frame_id == "gst_reference" and len(poses.poses) == 2
    for i, p in enumerate(poses.poses):
        tr = static[f"gst_candidate_{i}"].transform.translation
        assert np.allclose([p.position.x, p.position.y, p.position.z], [tr.x, tr.y, tr.z], atol=1e-9)

    # frustums: one per candidate and one for the estimated camera, apex at the camera centre
    probe.spin_until(lambda: {m.ns for a in rec["markers"] for m in a.markers} >= {"candidates",
                                                                                    "estimated/cam0"},
                     30, proc, "frustum markers")
    markers = {(m.ns, m.id): m for a in rec["markers"] for m in a.markers if m.action == Marker.ADD}
    cand = markers[("candidates", 1)]
    assert cand.type == Marker.LINE_LIST and len(cand.points) == 20
    assert cand.header.frame_id == "gst_reference"
    apex = cand.points[0]
    tr = static["gst_candidate_1"].transform.translation
    assert np.allclose([apex.x, apex.y, apex.z], [tr.x, tr.y, tr.z], atol=1e-6)
    assert len(markers[("estimated/cam0", 0)].points) == 20


def test_never_reparents_the_image_frame(running):
    """cam1's estimated frame is configured as 'cam1_gst'; images that carry that frame_id get a
    pose but no TF (the frame belongs to the driver's tree)."""
    probe, proc, rec, pubs, _ = running
    _send_frames(probe, proc, pubs, 500, lambda: len(rec["pose1"]) >= 2, "cam1 poses", camera="cam1",
                 frame_id="cam1_gst")
    assert rec["pose1"][0].header.stamp.sec >= 500
    assert not _transforms(rec["tf"], "cam1_gst")


def test_goal_pose_gets_predicted_view(running):
    probe, proc, rec, pubs, _ = running
    _send_frames(probe, proc, pubs, 700, lambda: bool(rec["pose0"]), "a reference and a pose")
    goal = PoseStamped()
    goal.header.frame_id = "gst_reference"
    goal.header.stamp.sec = 42
    goal.pose.position.x, goal.pose.position.z = 0.6, -0.4
    goal.pose.orientation.y, goal.pose.orientation.w = math.sin(0.15), math.cos(0.15)
    pubs["goal"].publish(goal)
    probe.spin_until(lambda: rec["goal_image"] and rec["goal_info"] and rec["goal_spread"]
                     and rec["goal_sample"] and rec["goal_observation"]
                     and _transforms(rec["tf"], "gst_goal_observation"), 60, proc,
                     "the goal's predicted view")
    img = rec["goal_image"][-1]
    assert (img.width, img.height, img.header.frame_id, img.header.stamp.sec) == (32, 32, "gst_goal", 42)
    # the expected view (the mean of the view_keep, 4, most consistent of view_samples, 16, samples)
    # comes with the per-pixel spread of all the samples
    spread = rec["goal_spread"][-1]
    assert (spread.width, spread.height, spread.encoding) == (32, 32, "mono8")
    assert spread.header.frame_id == "gst_goal"
    assert 0 < max(spread.data) <= 128  # a random tiny model's samples differ; a std of 0-255 values <= 127.5
    # and the sample closest to the goal camera: one of them, not their mean
    sample = rec["goal_sample"][-1]
    assert (sample.width, sample.height, sample.encoding) == (32, 32, "rgb8")
    assert (sample.header.frame_id, sample.header.stamp.sec) == ("gst_goal", 42)
    assert bytes(sample.data) != bytes(img.data)
    t = _transforms(rec["tf"], "gst_goal")[-1].transform
    # the requested pose comes back unchanged (scaled down for the model, up again for TF)
    assert np.allclose([t.translation.x, t.translation.y, t.translation.z], [0.6, 0.0, -0.4], atol=1e-6)
    assert np.allclose([t.rotation.y, t.rotation.w], [math.sin(0.15), math.cos(0.15)], atol=1e-6)
    # the seen view it was predicted from (goal_from_keyframes: the reference or a keyframe, as
    # given) and where that view's camera is: the reference's is the identity
    obs = rec["goal_observation"][-1]
    assert (obs.width, obs.height, obs.encoding) == (W, H, "rgb8")
    assert (obs.header.frame_id, obs.header.stamp.sec) == ("gst_goal_observation", 42)
    t_obs = _transforms(rec["tf"], "gst_goal_observation")[-1]
    assert t_obs.header.frame_id == "gst_reference"
    sent = {sec: bytes(numpy_to_image(rgb_image(H, W, seed=sec)).data) for sec in range(0, 800)}
    seen_as = [sec for sec, data in sent.items() if data == bytes(obs.data)]
    assert seen_as, "the observation is one of the frames the node was sent"

    bad = PoseStamped()
    bad.header.frame_id = "map"
    bad.pose.orientation.w = 1.0
    pubs["goal"].publish(bad)
    probe.spin_until(lambda: rec["diag"] and _latest_diag(rec, "goal topic").get("rejected_frame", 0) >= 1,
                     30, proc, "the goal in a foreign frame to be rejected")
    assert proc.poll() is None


def _bad_images():
    good = numpy_to_image(rgb_image(H, W), frame_id="cam0_optical")
    out = {}
    m = Image(header=good.header, height=H, width=W, encoding="rgb16", step=W * 6, data=bytes(W * H * 6))
    out["encoding"] = m
    out["size"] = Image(header=good.header, height=H, width=W, encoding="rgb8", step=W * 3,
                        data=bytes(W * H * 3 - 7))
    out["empty"] = Image(header=good.header, height=H, width=W, encoding="rgb8", step=W * 3, data=b"")
    out["oversized"] = Image(header=good.header, height=500, width=500, encoding="mono8", step=500,
                             data=bytes(500 * 500))
    out["camera_info_size"] = numpy_to_image(rgb_image(24, 32), frame_id="cam0_optical")
    return out


def test_bad_messages_are_counted_and_never_stop_the_node(running):
    probe, proc, rec, pubs, log = running
    bad = _bad_images()
    nan_info = K_to_camera_info(K0, W, H)
    nan_info.k = [math.nan] + list(nan_info.k[1:])
    want = {f"rejected_{k}" for k in bad} | {"rejected_camera_info"}

    def counts():
        if not rec["diag"]:
            return {}
        d = _latest_diag(rec, "camera cam0")
        return {k: d.get(k, 0) for k in want}

    def step():
        if all(v >= 1 for v in counts().values()) and counts():
            return True
        pubs["info0"].publish(K_to_camera_info(K0, W, H))
        for m in bad.values():
            pubs["img0"].publish(m)
        pubs["info0"].publish(nan_info)
        for _ in range(6):
            probe.executor.spin_once(timeout_sec=0.05)
        return False

    probe.spin_until(step, 60, proc, f"diagnostics counting {sorted(want)}")
    assert proc.poll() is None
    d = _latest_diag(rec, "camera cam0")
    # camera_info messages are counted apart from frames, so that the frames add up
    assert d["camera_info_rejected"] >= 1 and d["rejected"] >= len(want) - 1
    assert d["_level"] != 0 and d["last_problem"]
    # the keyframe tracker's counts are there (how many keyframes, estimates chained through one)
    assert d["keyframes"] >= 0 and 0 <= d["chained"] <= d["processed"]
    # still estimating after the bad input
    n = len(_transforms(rec["tf"], "cam0_estimated"))
    _send_frames(probe, proc, pubs, 900, lambda: len(_transforms(rec["tf"], "cam0_estimated")) > n,
                 "a pose after the bad messages")
    text = log.read_text()
    assert "unsupported encoding 'rgb16'" in text and "exceeds the limit" in text


def test_reference_service_and_topic(running):
    probe, proc, rec, pubs, _ = running
    _send_frames(probe, proc, pubs, 1100, lambda: bool(rec["pose0"]), "a frame")
    probe.spin_until(lambda: rec["diag"] and _latest_diag(rec, "reference")["state"] == "set", 30, proc,
                     "a reference")
    v0 = _latest_diag(rec, "reference")["version"]
    n_static = len(rec["tf_static"])
    reply = probe.call(probe.node.create_client(Trigger, "gst/set_reference"), Trigger.Request(), proc=proc)
    assert reply.success, reply.message
    probe.spin_until(lambda: _latest_diag(rec, "reference")["version"] == v0 + 1, 30, proc, "reference v+1")
    assert "set_reference service" in _latest_diag(rec, "reference")["source"]
    ref = numpy_to_image(rgb_image(40, 40, seed=7), frame_id="ref_optical")
    pubs["ref"].publish(ref)
    probe.spin_until(lambda: _latest_diag(rec, "reference")["version"] == v0 + 2, 30, proc, "reference v+2")
    d = _latest_diag(rec, "reference")
    assert "topic" in d["source"] and d["size"] == "40x40" and d["intrinsics"] == "default_fov"
    # a new reference recomputes the candidate views
    probe.spin_until(lambda: len(rec["tf_static"]) > n_static, 60, proc, "candidates for the new reference")


def test_lifecycle_services(model_dir, tmp_path):
    """Without autostart the node waits unconfigured; configure / activate / deactivate through
    the standard lifecycle services of another process."""
    params = write_params(tmp_path / "p.yaml", {**BASE_PARAMS, "model_dir": str(model_dir),
                                                "autostart": False, "candidate_count": 0,
                                                "cameras": ["lc_cam"], "estimated_frames": [""]})
    proc = start_node(params, ["-r", "__node:=gst_lc"], log_path=tmp_path / "node.log")
    probe = Probe("gst_test_lifecycle")
    try:
        get = probe.node.create_client(GetState, "gst_lc/get_state")
        change = probe.node.create_client(ChangeState, "gst_lc/change_state")
        assert probe.call(get, GetState.Request(), proc=proc).current_state.label == "unconfigured"
        tf = probe.record(TFMessage, "/tf", 100)
        img = probe.publisher(Image, "lc_cam/image_raw")   # a camera no other node listens to
        steps = ((Transition.TRANSITION_CONFIGURE, "inactive"), (Transition.TRANSITION_ACTIVATE, "active"))
        for tid, label in steps:
            assert probe.call(change, ChangeState.Request(transition=Transition(id=tid)), 60, proc).success
            assert probe.call(get, GetState.Request(), proc=proc).current_state.label == label
        probe.wait_matched(img, proc=proc)

        def step():
            if _transforms(tf, "lc_cam_estimated"):
                return True
            img.publish(numpy_to_image(rgb_image(H, W), frame_id="lc_cam_optical"))
            for _ in range(5):
                probe.executor.spin_once(timeout_sec=0.05)
            return False

        probe.spin_until(step, 60, proc, "a pose once active")
        req = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
        assert probe.call(change, req, proc=proc).success
        assert probe.call(get, GetState.Request(), proc=proc).current_state.label == "inactive"
        probe.spin_until(lambda: img.get_subscription_count() == 0, 10, proc, "the image subscription to go")
    finally:
        probe.close()
        stop_process(proc)


def test_uncalibrated_camera_info_uses_the_default_fov_and_every_frame_is_counted(model_dir, tmp_path):
    """A driver of an uncalibrated camera publishes camera_info with an all-zero K (the ROS
    convention): the node says so, takes the reference and estimates with default_fov_deg
    instead of waiting for a K that never comes; the camera's diagnostics add up (received =
    processed + dropped + rejected + errors, give or take the frame in flight), frames before the
    the camera_info rejected nowhere."""
    params = write_params(tmp_path / "p.yaml", {**BASE_PARAMS, "model_dir": str(model_dir),
                                                "candidate_count": 0, "cameras": ["uc_cam"],
                                                "estimated_frames": [""]})
    proc = start_node(params, ["-r", "__node:=gst_uc"], log_path=tmp_path / "node.log")
    probe = Probe("gst_test_uncalibrated")
    try:
        tf = probe.record(TFMessage, "/tf", 100)
        diag = probe.record(DiagnosticArray, "/diagnostics")
        img = probe.publisher(Image, "uc_cam/image_raw")
        info = probe.publisher(CameraInfo, "uc_cam/camera_info")
        probe.wait_matched(img, timeout=60, proc=proc)
        probe.wait_matched(info, timeout=60, proc=proc)
        zero = K_to_camera_info(K0, W, H, frame_id="uc_cam_optical")
        zero.k = [0.0] * 9

        def step():
            if len(_transforms(tf, "uc_cam_estimated")) >= 2:
                return True
            info.publish(zero)
            img.publish(numpy_to_image(rgb_image(H, W), frame_id="uc_cam_optical"))
            for _ in range(5):
                probe.executor.spin_once(timeout_sec=0.05)
            return False

        probe.spin_until(step, 90, proc, "poses from a camera whose camera_info has an all-zero K")

        def latest():   # /diagnostics also carries the other tests' node: this node's latest status
            mine = [m for m in diag if any(st.name.endswith("camera uc_cam") for st in m.status)]
            return diagnostics_values(mine[-1], "camera uc_cam") if mine else None

        def counted():
            for _ in range(5):
                probe.executor.spin_once(timeout_sec=0.05)
            d = latest()
            if d is None:
                return False
            accounted = d["processed"] + d["dropped"] + d["rejected"] + d["errors"]
            return d["processed"] >= 2 and d["received"] - 1 <= accounted <= d["received"]

        probe.spin_until(counted, 30, proc, "diagnostics in which every frame is accounted for")
        d = latest()
        assert d["camera_info_rejected"] == 0 and d["rejected"] == 0
    finally:
        probe.close()
        stop_process(proc)
    assert "all-zero K (an uncalibrated camera): using default_fov_deg" in (tmp_path / "node.log").read_text()


def test_a_bad_start_up_parameter_is_one_fatal_line(model_dir, tmp_path):
    params = write_params(tmp_path / "p.yaml", {**BASE_PARAMS, "model_dir": str(model_dir),
                                                "translation_scale": -1.0})
    proc = start_node(params, ["-r", "__node:=gst_badparam"], log_path=tmp_path / "node.log")
    assert proc.wait(timeout=120) == 2
    text = (tmp_path / "node.log").read_text()
    assert "bad parameter" in text and "translation_scale" in text and "Traceback" not in text


def test_missing_model_fails_configure_with_a_clear_message(tmp_path):
    params = write_params(tmp_path / "p.yaml", {**BASE_PARAMS, "model_dir": str(tmp_path / "nope")})
    proc = start_node(params, ["-r", "__node:=gst_nomodel"], log_path=tmp_path / "node.log")
    assert proc.wait(timeout=120) != 0
    text = (tmp_path / "node.log").read_text()
    assert "could not load the GST model" in text and "nope" in text
