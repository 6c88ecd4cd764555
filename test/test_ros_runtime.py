"""The ROS 2 runtime is real: a separate process publishes sensor_msgs/Image and
tf2_msgs/TFMessage on /tf; this process receives both over DDS (localhost-only discovery,
private domain id from conftest.py), waiting for the match instead of sleeping."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

pytestmark = pytest.mark.ros
SCRIPT = Path(__file__).parent / "ros_scripts" / "publish_image_and_tf.py"


def test_environment_keeps_ros_on_localhost():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["ROS_DOMAIN_ID"] not in ("", "0")


def test_image_and_tf_cross_processes():
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    pub = subprocess.Popen([sys.executable, str(SCRIPT), "40"], env=os.environ.copy())
    context = rclpy.Context()
    rclpy.init(context=context)
    got = {"image": [], "tf": []}
    try:
        node = rclpy.create_node("gst_test_subscriber", context=context)
        node.create_subscription(Image, "gst_test/image", got["image"].append, 10)
        node.create_subscription(TFMessage, "/tf", got["tf"].append, QoSProfile(depth=100))
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (got["image"] and got["tf"]):
            executor.spin_once(timeout_sec=0.1)
            assert pub.poll() is None, "publisher process exited early"
        assert got["image"], "no Image arrived from the other process"
        assert got["tf"], "no TFMessage arrived on /tf from the other process"
        img = got["image"][0]
        assert (img.height, img.width, img.encoding, img.step) == (2, 3, "rgb8", 9)
        assert bytes(img.data) == bytes(range(18))
        tf = got["tf"][0].transforms[0]
        assert (tf.header.frame_id, tf.child_frame_id) == ("reference", "camera_optical_frame")
        assert tf.transform.translation.x >= 1.0 and tf.transform.rotation.w == 1.0
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        pub.terminate()
        pub.wait(timeout=10)
