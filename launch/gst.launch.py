"""gst_node with config/gst.yaml; camera topics remapped from launch arguments.

    ros2 launch gst_ros gst.launch.py image:=/my_cam/image_raw camera_info:=/my_cam/camera_info \
        model_dir:=/path/to/model [image_transport:=compressed]

image_transport:=compressed reads the driver's JPEG / PNG stream, <image>/compressed.

The node autostarts (configure + activate) unless autostart:=false (then drive it through its
lifecycle services, e.g. with a lifecycle manager).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    config = os.path.join(get_package_share_directory("gst_ros"), "config", "gst.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info",
                              description="input camera_info topic"),
        DeclareLaunchArgument("image_transport", default_value="raw",
                              description="raw (sensor_msgs/Image) or compressed "
                                          "(<image>/compressed, JPEG or PNG)"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="GST model directory (empty: the shipped model)"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure + activate on start"),
        Node(
            package="gst_ros",
            executable="gst_node",
            name="gst_node",
            output="screen",
            parameters=[config, {"model_dir": LaunchConfiguration("model_dir"),
                                 "autostart": LaunchConfiguration("autostart"),
                                 "image_transport": LaunchConfiguration("image_transport")}],
            remappings=[("camera/image_raw", LaunchConfiguration("image")),
                        ("camera/image_raw/compressed", [LaunchConfiguration("image"), "/compressed"]),
                        ("camera/camera_info", LaunchConfiguration("camera_info"))],
        ),
    ])
