"""sim_camera_node in its own process: Image, CameraInfo and /tf arrive here with one shared
stamp per frame, consistent intrinsics and frames, and the TF pose is the camera that rendered
the image (re-rendering the node's scene from the received pose gives the received image)."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("pybullet")

pytestmark = pytest.mark.ros


def test_sim_camera_messages_cross_processes(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from gst_ros.geometry import camera_center, intrinsics_from_fov
    from gst_ros.ros.conversions import (
        camera_info_to_K,
        image_to_numpy,
        stamp_to_nanoseconds,
        transform_stamped_to_w2c,
    )
    from gst_ros.ros.qos import tf_qos

    cmd = [sys.executable, "-m", "gst_ros.ros.sim_camera_node", "--ros-args",
           "-p", "rate_hz:=15.0", "-p", "width:=96", "-p", "height:=72", "-p", "seed:=3",
           "-p", "camera_frame:=test_cam_optical", "-p", "world_frame:=test_world"]
    log_path = tmp_path / "sim_camera.log"
    log_file = open(log_path, "wb")  # a file, not a pipe: the node can never block on a full pipe
    node_proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=log_file, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context)
    got = {"image": [], "info": [], "tf": [], "diag": []}
    try:
        node = rclpy.create_node("sim_camera_test", context=context)
        node.create_subscription(Image, "image", got["image"].append, 10)
        node.create_subscription(CameraInfo, "camera_info", got["info"].append, 10)
        node.create_subscription(TFMessage, "/tf", got["tf"].append, tf_qos())
        node.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (len(got["image"]) >= 5 and got["diag"]):
            executor.spin_once(timeout_sec=0.1)
            assert node_proc.poll() is None, log_path.read_text()
        assert len(got["image"]) >= 5, "too few images arrived from the node process"
        assert got["info"] and got["tf"] and got["diag"]

        by_stamp = {}
        for kind in ("image", "info"):
            for m in got[kind]:
                by_stamp.setdefault(stamp_to_nanoseconds(m.header.stamp), {})[kind] = m
        for tfm in got["tf"]:
            for t in tfm.transforms:
                if t.child_frame_id == "test_cam_optical":
                    by_stamp.setdefault(stamp_to_nanoseconds(t.header.stamp), {})["tf"] = t
        complete = {s: v for s, v in by_stamp.items() if len(v) == 3}
        assert len(complete) >= 3, "image, camera_info and tf must share stamps"
        K = intrinsics_from_fov(49.1, 96, 72)
        centers = []
        for v in complete.values():
            img, info, tf = v["image"], v["info"], v["tf"]
            assert img.header.frame_id == info.header.frame_id == "test_cam_optical"
            assert tf.header.frame_id == "test_world"
            assert img.encoding == "rgb8" and image_to_numpy(img).shape == (72, 96, 3)
            assert np.allclose(camera_info_to_K(info), K)
            w2c = transform_stamped_to_w2c(tf)
            assert np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-9)
            centers.append(camera_center(w2c))
        centers = np.array(centers)
        # an orbit: the camera moves, smoothly, and stays at a similar distance from the scene
        assert np.ptp(centers, axis=0).max() > 1e-3
        rgb = [image_to_numpy(v["image"]) for v in complete.values()]
        assert any(not np.array_equal(rgb[0], r) for r in rgb[1:]), "the view should change"
        # re-render the node's scene (same seed) from the received TF pose: the same image
        from gst_ros.sim.renderer import Renderer
        from gst_ros.sim.scene import SceneSampler, object_pool

        spec = SceneSampler().sample(np.random.default_rng(3), "sim_camera", object_pool("textured"))
        with Renderer() as r:
            r.load_scene(spec)
            v = next(iter(complete.values()))
            again = r.render(K, transform_stamped_to_w2c(v["tf"]), 96, 72).rgb
        diff = np.abs(again.astype(int) - image_to_numpy(v["image"]).astype(int))
        assert (diff > 2).mean() < 0.01, "the TF pose must be the camera that rendered the image"
        values = {kv.key: kv.value for kv in got["diag"][-1].status[0].values}
        assert float(values["target_hz"]) == 15.0 and float(values["achieved_hz"]) >= 0
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        node_proc.terminate()
        try:
            node_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node_proc.kill()
            node_proc.wait()
        log_file.close()
