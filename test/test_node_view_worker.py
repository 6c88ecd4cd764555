"""gst_node's view worker, in this process over real rclpy: a goal's view is drawn on its own
thread with its own copy of the model, so a pose is estimated while the goal is still being
answered; with `view_worker: false` the one worker answers them in turn. The long work is
stood in for by handlers that wait on an event, so nothing here depends on timing."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

sys.path.insert(0, str(Path(__file__).parent))

from engine_fixtures import make_tiny_model  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from gst_ros.ros.gst_node import Frame, GSTNode  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def _node(context, model_dir, view_worker: bool) -> GSTNode:
    params = [Parameter("model_dir", value=str(model_dir)), Parameter("device", value="cpu"),
              Parameter("cameras", value=["cam0"]), Parameter("candidate_count", value=0),
              Parameter("view_worker", value=view_worker)]
    node = GSTNode(context=context, parameter_overrides=params)
    node.trigger_configure()
    node.trigger_activate()
    image = np.zeros((48, 64, 3), np.uint8)
    node._set_reference(image, None, "test", node.get_clock().now().to_msg(), "cam0_optical")
    return node


def _wait(predicate, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("view_worker", [True, False])
def test_a_goal_view_does_not_hold_up_the_poses(model_dir, view_worker):
    context = rclpy.Context()
    rclpy.init(context=context)
    node = None
    try:
        node = _node(context, model_dir, view_worker)
        release, done = threading.Event(), {}

        def slow_goal(ref, stamp, w2c, received):   # stands in for predict_view's seconds
            done["goal_thread"] = threading.current_thread().name
            release.wait(30.0)
            done["goal"] = True

        def estimate(ref, frame):
            done["pose_thread"] = threading.current_thread().name
            done["pose"] = True

        node._run_goal, node._run_estimate = slow_goal, estimate
        node._view_worker.put("goal", (None, np.eye(4), time.monotonic()))
        assert _wait(lambda: "goal_thread" in done)
        frame = Frame("cam0", np.zeros((48, 64, 3), np.uint8), None, None, "cam0_optical", time.monotonic())
        node._worker.put(("camera", "cam0"), frame)
        if view_worker:
            # the pose comes while the goal is still being answered, from the other thread
            assert _wait(lambda: done.get("pose")) and "goal" not in done
            assert (done["pose_thread"], done["goal_thread"]) == ("gst_worker", "gst_view_worker")
            assert node.view_engine is not node.engine and node._view_worker is not node._worker
            a, b = node.engine.model.state_dict(), node.view_engine.model.state_dict()
            assert all(a[k].data_ptr() != b[k].data_ptr() and (a[k] == b[k]).all() for k in a)
        else:
            assert node.view_engine is node.engine and node._view_worker is node._worker
            assert not _wait(lambda: done.get("pose"), timeout=0.3)   # queued behind the goal
        release.set()
        assert _wait(lambda: done.get("goal") and done.get("pose"))
        if not view_worker:
            assert done["pose_thread"] == done["goal_thread"] == "gst_worker"
        node.trigger_deactivate()
        assert node._worker is None and node._view_worker is None
    finally:
        release.set()
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)
