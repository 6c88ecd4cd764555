"""Publisher half of test_ros_runtime.py: publishes one sensor_msgs/Image and one
tf2_msgs/TFMessage on /tf per loop once a subscriber has matched, until killed or timeout."""
import sys
import time

import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage


def main():
    rclpy.init()
    node = rclpy.create_node("gst_test_publisher")
    img_pub = node.create_publisher(Image, "gst_test/image", 10)
    tf_pub = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
    seq = 0
    while time.monotonic() < deadline:
        if img_pub.get_subscription_count() and tf_pub.get_subscription_count():
            stamp = node.get_clock().now().to_msg()
            img = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
            img.header.stamp = stamp
            img.header.frame_id = "camera_optical_frame"
            img_pub.publish(img)
            t = TransformStamped()
            t.header.stamp = stamp
            t.header.frame_id = "reference"
            t.child_frame_id = "camera_optical_frame"
            t.transform.translation.x = 1.0 + seq
            t.transform.rotation.w = 1.0
            tf_pub.publish(TFMessage(transforms=[t]))
            seq += 1
        time.sleep(0.05)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
