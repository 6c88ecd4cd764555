"""sim_camera_node: a simulated RGB camera moving around a pybullet scene (ROS 2 adapter).

Publishes, every frame, with ONE stamp shared by all three:
- `image` (sensor_msgs/Image, rgb8, frame_id = camera_frame),
- `camera_info` (sensor_msgs/CameraInfo, ideal pinhole, frame_id = camera_frame),
- `/tf` (tf2_msgs/TFMessage): world_frame -> camera_frame, the ground-truth pose of the camera's
  optical frame (REP 103: z forward, x right, y down), i.e. inv(w2c).
and once a second `/diagnostics` (diagnostic_msgs/DiagnosticArray) with the achieved rate; if
rendering cannot keep `rate_hz`, a warning with the achieved rate is logged.

Parameters (all declared): world_frame, camera_frame, rate_hz, width, height, fov_deg,
objects (textured|random|mixed), num_objects, seed, trajectory (orbit|sphere), period_s,
image_topic, camera_info_topic. The camera path is a function of the frame count (frame k is at
time k / rate_hz on the trajectory), so a seed always gives the same images and poses.
Scene building and rendering live in gst_ros.sim; this file only moves them onto ROS topics.
"""
from __future__ import annotations

import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from gst_ros.ros.conversions import (
    K_to_camera_info,
    make_header,
    numpy_to_image,
    tf_message,
    w2c_to_transform_stamped,
)
from gst_ros.ros.qos import output_qos, tf_qos
from gst_ros.sim.cameras import GST_FOV_DEG, TRAJECTORIES
from gst_ros.sim.moving_camera import MovingCamera
from gst_ros.sim.scene import OBJECT_SETS

PARAMETERS = {
    "world_frame": ("world", "parent frame of the camera pose on /tf"),
    "camera_frame": ("sim_camera_optical_frame", "optical frame of the camera (image frame_id, TF child)"),
    "rate_hz": (10.0, "frames per second"),
    "width": (128, "image width in pixels"),
    "height": (128, "image height in pixels"),
    "fov_deg": (GST_FOV_DEG, "vertical field of view in degrees"),
    "objects": ("textured", f"object set, one of {OBJECT_SETS}"),
    "num_objects": (1, "objects in the scene"),
    "seed": (0, "random seed of the scene and the trajectory"),
    "trajectory": ("orbit", f"camera motion, one of {TRAJECTORIES}: smooth orbit or random jumps"),
    "period_s": (20.0, "seconds per orbit cycle"),
    "image_topic": ("image", "image topic"),
    "camera_info_topic": ("camera_info", "camera info topic"),
}
RATE_TOLERANCE = 0.9   # warn when achieved rate < RATE_TOLERANCE * rate_hz
REPORT_PERIOD_S = 1.0


class SimCameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__("sim_camera", **kwargs)
        for name, (default, doc) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=doc))
        g = lambda n: self.get_parameter(n).value
        self.world_frame, self.camera_frame = str(g("world_frame")), str(g("camera_frame"))
        self.rate_hz, self.period_s = float(g("rate_hz")), float(g("period_s"))
        self.width, self.height = int(g("width")), int(g("height"))
        self.trajectory = str(g("trajectory"))
        if self.rate_hz <= 0 or self.period_s <= 0:
            raise ValueError(f"rate_hz and period_s must be > 0, got {self.rate_hz}, {self.period_s}")
        if not (16 <= self.width <= 2048 and 16 <= self.height <= 2048):
            raise ValueError(f"width and height must be in 16..2048, got {self.width}x{self.height}")
        self.world = MovingCamera(int(g("seed")), self.width, self.height, float(g("fov_deg")),
                                  str(g("objects")), int(g("num_objects")), self.trajectory,
                                  self.rate_hz, self.period_s)
        self.K = self.world.K
        self.pub_image = self.create_publisher(Image, str(g("image_topic")), output_qos(5))
        self.pub_info = self.create_publisher(CameraInfo, str(g("camera_info_topic")), output_qos(5))
        self.pub_tf = self.create_publisher(TFMessage, "/tf", tf_qos())
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos(10))
        self.frame = 0
        self._window_start, self._window_frames = time.monotonic(), 0
        self.achieved_hz = 0.0
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(REPORT_PERIOD_S, self._report)
        self.get_logger().info(
            f"rendering {[o.name for o in self.world.spec.objects]} at {self.width}x{self.height}, "
            f"{self.rate_hz} Hz, {self.trajectory} trajectory; TF {self.world_frame} -> {self.camera_frame}")

    def _tick(self) -> None:
        rgb, w2c = self.world.render(self.frame)
        stamp = self.get_clock().now().to_msg()
        self.pub_image.publish(numpy_to_image(rgb, stamp, self.camera_frame, "rgb8"))
        self.pub_info.publish(K_to_camera_info(self.K, self.width, self.height, stamp, self.camera_frame))
        tf = w2c_to_transform_stamped(w2c, self.world_frame, self.camera_frame, stamp)
        self.pub_tf.publish(tf_message([tf]))
        self.frame += 1
        self._window_frames += 1

    def _report(self) -> None:
        now = time.monotonic()
        dt = now - self._window_start
        self.achieved_hz = self._window_frames / dt if dt > 0 else 0.0
        self._window_start, self._window_frames = now, 0
        ok = self.achieved_hz >= RATE_TOLERANCE * self.rate_hz
        if not ok and self.frame > 0:
            self.get_logger().warning(
                f"cannot keep {self.rate_hz:.1f} Hz: achieved {self.achieved_hz:.1f} Hz "
                f"({self.width}x{self.height}); lower rate_hz or the image size",
                throttle_duration_sec=5.0)
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK if ok else DiagnosticStatus.WARN, name="sim_camera: rate",
            hardware_id=self.camera_frame,
            message=f"{self.achieved_hz:.1f} Hz of {self.rate_hz:.1f} Hz",
            values=[KeyValue(key="achieved_hz", value=f"{self.achieved_hz:.3f}"),
                    KeyValue(key="target_hz", value=f"{self.rate_hz:.3f}"),
                    KeyValue(key="frames", value=str(self.frame))])
        self.pub_diag.publish(DiagnosticArray(header=make_header(self.get_clock().now().to_msg()),
                                              status=[status]))

    def destroy_node(self):
        self.world.close()
        super().destroy_node()


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = SimCameraNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as e:
        print(f"sim_camera_node: {e}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
