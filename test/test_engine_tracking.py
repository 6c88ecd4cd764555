"""KeyframeTracker: chaining a reading through a keyframe (pose and first-order covariance), and the
tracker's choice between the direct and the chained reading, on a stand-in engine whose readings
are known."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gst_ros.engine.engine import PoseEstimate, confidence_from_covariance
from gst_ros.engine.tracking import KeyframeTracker, chain_pose, relative_to_keyframe
from gst_ros.geometry import SCENE_CENTER_REF, invert_pose, look_at, rotation_error_deg, so3_exp, so3_log


def orbit_camera(azimuth_deg: float, distance: float = 1.0, height: float = 0.0) -> np.ndarray:
    """w2c of a camera `distance` from the scene centre (0, 0, 1), turned `azimuth_deg` about the
    reference camera's y axis (OpenCV: y down), looking at the centre. Azimuth 0, distance 1 is
    the reference camera itself (the identity)."""
    a = math.radians(azimuth_deg)
    eye = SCENE_CENTER_REF + distance * np.array([math.sin(a), height, -math.cos(a)])
    return look_at(eye, SCENE_CENTER_REF, up=(0.0, -1.0, 0.0))


def in_frame_of(w2c_k: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """The camera w2c read against keyframe k: in k's frame, in k's unit (its distance to the
    scene centre = 1)."""
    link = w2c @ invert_pose(w2c_k)
    s = np.linalg.norm(w2c_k[:3, :3] @ SCENE_CENTER_REF + w2c_k[:3, 3])
    link[:3, 3] /= s
    return link


def test_reference_camera_is_the_identity():
    np.testing.assert_allclose(orbit_camera(0.0), np.eye(4), atol=1e-12)


def test_chain_pose_recovers_the_camera_through_a_keyframe_at_another_distance():
    kf = orbit_camera(35.0, distance=1.6, height=0.2)
    cam = orbit_camera(80.0, distance=1.2, height=-0.1)
    w2c, cov = chain_pose(kf, np.zeros((6, 6)), in_frame_of(kf, cam), np.zeros((6, 6)))
    np.testing.assert_allclose(w2c, cam, atol=1e-12)
    assert not cov.any()


def _perturb(w2c: np.ndarray, cov: np.ndarray, rng) -> np.ndarray:
    """A draw of the pose w2c with error covariance cov in the module's convention: centre
    C + dC, c2w rotation Exp(w) Q."""
    d = rng.multivariate_normal(np.zeros(6), cov)
    c2w = invert_pose(w2c)
    out = np.eye(4)
    out[:3, :3] = so3_exp(torch.from_numpy(d[3:])).numpy() @ c2w[:3, :3]
    out[:3, 3] = c2w[:3, 3] + d[:3]
    return invert_pose(out)


def test_chain_pose_covariance_matches_monte_carlo():
    """Draw keyframe and link errors, compose exactly, and compare the spread of the result
    (centre deviation, rotation vector about the reference axes) with the propagated covariance."""
    rng = np.random.default_rng(0)
    kf, cam = orbit_camera(40.0, distance=1.5, height=0.1), orbit_camera(75.0)
    link = in_frame_of(kf, cam)
    A = rng.normal(size=(6, 6)) * 0.01
    B = rng.normal(size=(6, 6)) * 0.01
    cov_k, cov_l = A @ A.T + 1e-5 * np.eye(6), B @ B.T + 1e-5 * np.eye(6)
    w2c, cov = chain_pose(kf, cov_k, link, cov_l)
    ref_c2w = invert_pose(w2c)
    dev = []
    for _ in range(8000):
        c2w = invert_pose(chain_pose(_perturb(kf, cov_k, rng), cov_k, _perturb(link, cov_l, rng), cov_l)[0])
        w = so3_log(torch.from_numpy(c2w[:3, :3] @ ref_c2w[:3, :3].T)).numpy()
        dev.append(np.concatenate([c2w[:3, 3] - ref_c2w[:3, 3], w]))
    empirical = np.cov(np.array(dev).T)
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    np.testing.assert_allclose(empirical / scale, cov / scale, atol=0.08)
    # the keyframe's rotation error moves the chained centre: the coupling term is there
    assert np.abs(cov[:3, 3:]).max() > 0.1 * np.sqrt(np.diag(cov)[:3].max() * np.diag(cov)[3:].max())


class ScriptedEngine:
    """estimate_pose stand-in: images are (4,4,3) arrays whose first pixel holds a frame index;
    the reading of frame j against frame i is the true relative pose with its rotation turned by
    an error that grows faster than the angle between them (error_per_deg x the angle x the
    angle / 30 deg: readings of far-apart views degrade), and a covariance that says so (standard
    deviation std_per_deg x the angle, per axis)."""

    def __init__(self, truth: dict[int, np.ndarray], error_per_deg: float = 0.0, std_per_deg: float = 0.1):
        self.truth, self.error_per_deg, self.std_per_deg = truth, error_per_deg, std_per_deg
        self.calls: list[tuple[int, int]] = []

    @staticmethod
    def image(j: int) -> np.ndarray:
        return np.full((4, 4, 3), j, np.uint8)

    def estimate_pose(self, observation, target, K_obs=None, K_target=None, samples=4):
        i, j = int(observation[0, 0, 0]), int(target[0, 0, 0])
        self.calls.append((i, j))
        read = in_frame_of(self.truth[i], self.truth[j])
        apart = float(rotation_error_deg(read[:3, :3], np.eye(3)))
        error_deg = self.error_per_deg * apart * apart / 30.0
        turn = so3_exp(torch.tensor([0.0, 0.0, math.radians(error_deg)])).numpy()
        read[:3, :3] = turn @ read[:3, :3]
        cov = np.diag([1e-4] * 3 + [math.radians(self.std_per_deg * apart) ** 2 + 1e-6] * 3)
        conf, spread = confidence_from_covariance(cov)
        return PoseEstimate(w2c=read, samples_w2c=read[None], covariance=cov, confidence=conf,
                            rotation_spread_deg=spread, latency_s=0.0, uncertainty_from="heads")


def test_tracker_chains_through_keyframes_when_the_direct_reading_is_worse():
    truth = {j: orbit_camera(10.0 * j) for j in range(12)}       # frame j turned 10 j degrees
    engine = ScriptedEngine(truth, error_per_deg=0.1)             # 3 deg at 30 deg apart, 40 at 110
    tracker = KeyframeTracker(engine, keyframe_deg=25.0)
    tracker.set_reference(engine.image(0))
    used, errors = [], []
    for j in range(1, 12):
        est = tracker.estimate(engine.image(j))
        used.append(est.keyframe)
        errors.append(float(rotation_error_deg(est.w2c[:3, :3], truth[j][:3, :3])))
    # frames up to the first keyframe are read directly; later ones through a keyframe
    assert used[:3] == [0, 0, 0] and all(k > 0 for k in used[4:])
    assert len(tracker.keyframes) >= 2
    direct = [0.1 * (10.0 * j) ** 2 / 30.0 for j in range(1, 12)]  # the direct reading's error
    assert errors[-1] < 0.5 * direct[-1] and max(errors) < 0.5 * direct[-1]
    # a chained estimate's covariance is below the direct reading's (that is why it was chosen)
    est = tracker.estimate(engine.image(11))
    assert est.keyframe > 0 and est.covariance[3, 3] < math.radians(0.1 * 110.0) ** 2
    # the tracker read each frame twice at most: directly and against one keyframe
    assert len(engine.calls) <= 2 * 12


def test_tracker_keeps_the_direct_reading_when_it_is_better_and_can_be_switched_off():
    truth = {j: orbit_camera(10.0 * j) for j in range(8)}
    engine = ScriptedEngine(truth, std_per_deg=0.0)               # direct readings never less sure
    tracker = KeyframeTracker(engine, keyframe_deg=15.0)
    tracker.set_reference(engine.image(0))
    for j in range(1, 8):
        est = tracker.estimate(engine.image(j))
        assert est.keyframe == 0
        np.testing.assert_allclose(est.w2c, truth[j], atol=1e-9)
    assert tracker.keyframes                                     # keyframes kept, just not better
    # and never read: the direct reading was always at least as sure as any keyframe
    assert engine.calls == [(0, j) for j in range(1, 8)]
    off = KeyframeTracker(ScriptedEngine(truth, error_per_deg=0.1), keyframe_deg=0.0)
    off.set_reference(engine.image(0))
    for j in range(1, 8):
        assert off.estimate(engine.image(j)).keyframe == 0
    assert off.engine.calls == [(0, j) for j in range(1, 8)] and not off.keyframes


def test_tracker_needs_a_reference_and_forgets_keyframes_with_it():
    truth = {j: orbit_camera(20.0 * j) for j in range(4)}
    engine = ScriptedEngine(truth)
    tracker = KeyframeTracker(engine, keyframe_deg=15.0, max_keyframes=2)
    with pytest.raises(RuntimeError, match="set_reference"):
        tracker.estimate(engine.image(1))
    tracker.set_reference(engine.image(0))
    for j in (1, 2, 3):
        tracker.estimate(engine.image(j))
    assert len(tracker.keyframes) == 2                           # capped: the oldest dropped
    tracker.set_reference(engine.image(2))
    assert tracker.keyframes == []
    est = tracker.estimate(engine.image(3))                      # now relative to frame 2
    np.testing.assert_allclose(est.w2c, in_frame_of(truth[2], truth[3]), atol=1e-9)


def test_a_camera_at_the_scene_centre_never_becomes_a_keyframe():
    """A keyframe's unit is its distance to the scene centre: at the centre there is none."""
    at_centre = np.eye(4)
    at_centre[:3, :3] = so3_exp(torch.tensor([0.0, math.radians(60.0), 0.0])).numpy()
    at_centre[:3, 3] = -at_centre[:3, :3] @ SCENE_CENTER_REF
    truth = {0: orbit_camera(0.0), 1: at_centre, 2: orbit_camera(60.0)}
    engine = ScriptedEngine(truth)
    tracker = KeyframeTracker(engine, keyframe_deg=20.0)
    tracker.set_reference(engine.image(0))
    tracker.estimate(engine.image(1))
    assert tracker.keyframes == []
    tracker.estimate(engine.image(2))
    assert len(tracker.keyframes) == 1 and tracker.keyframes[0].image[0, 0, 0] == 2


angles = st.floats(-170.0, 170.0)


@settings(max_examples=60, deadline=None)
@given(angles, st.floats(0.4, 2.5), st.floats(-0.5, 0.5), angles, st.floats(0.4, 2.5), st.floats(-0.5, 0.5))
def test_relative_to_keyframe_is_the_read_pose_and_chain_pose_undoes_it(az_k, d_k, h_k, az, d, h):
    kf, cam = orbit_camera(az_k, d_k, h_k), orbit_camera(az, d, h)
    link = relative_to_keyframe(kf, cam)
    np.testing.assert_allclose(link, in_frame_of(kf, cam), atol=1e-9)
    np.testing.assert_allclose(chain_pose(kf, np.zeros((6, 6)), link, np.zeros((6, 6)))[0], cam, atol=1e-9)


def test_nearest_view_is_the_seen_view_nearest_the_requested_camera():
    truth = {j: orbit_camera(20.0 * j, distance=1.0 + 0.1 * j) for j in range(6)}
    engine = ScriptedEngine(truth)
    tracker = KeyframeTracker(engine, keyframe_deg=15.0)
    with pytest.raises(RuntimeError, match="set_reference"):
        tracker.nearest_view(truth[1])
    tracker.set_reference(engine.image(0), K=np.eye(3))
    for j in (1, 2, 3):
        tracker.estimate(engine.image(j))
    assert [k.image[0, 0, 0] for k in tracker.keyframes] == [1, 2, 3]
    # near the reference: the reference itself, the request unchanged
    near_ref = tracker.nearest_view(orbit_camera(-15.0))
    assert near_ref.keyframe == 0 and near_ref.image[0, 0, 0] == 0 and near_ref.K is not None
    np.testing.assert_allclose(near_ref.w2c, orbit_camera(-15.0), atol=1e-12)
    assert near_ref.angle_deg == pytest.approx(15.0)
    # 75 deg round: keyframe 3 (frame 3, at 60 deg), the request in that frame's own unit
    goal = orbit_camera(75.0, distance=1.2)
    view = tracker.nearest_view(goal)
    assert view.keyframe == 3 and view.image[0, 0, 0] == 3 and view.angle_deg == pytest.approx(15.0)
    np.testing.assert_allclose(view.w2c, in_frame_of(truth[3], goal), atol=1e-9)
    np.testing.assert_allclose(view.view_w2c, truth[3], atol=1e-9)      # its estimate (exact here)
    np.testing.assert_array_equal(near_ref.view_w2c, np.eye(4))
    # the request at a keyframe's own pose is the identity from that keyframe
    np.testing.assert_allclose(tracker.nearest_view(truth[2]).w2c, np.eye(4), atol=1e-9)
