"""Simulated camera + gst_node + rviz2 (config/gst.rviz): TF, frustums and predicted views.

    ros2 launch gst_ros sim.launch.py [model_dir:=DIR] [rviz:=false]

The same set-up without the `launch` package: python -m gst_ros.ros.stack
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("gst_ros")
    config = os.path.join(share, "config", "gst.yaml")
    rviz_config = os.path.join(share, "config", "gst.rviz")
    return LaunchDescription([
        DeclareLaunchArgument("model_dir", default_value="",
                              description="GST model directory (empty: the shipped model)"),
        DeclareLaunchArgument("rviz", default_value="true", description="start rviz2"),
        Node(
            package="gst_ros",
            executable="sim_camera_node",
            name="sim_camera",
            output="screen",
            parameters=[{"image_topic": "camera/image_raw", "camera_info_topic": "camera/camera_info",
                         "rate_hz": 5.0, "width": 256, "height": 256, "objects": "textured",
                         "num_objects": 2}],
        ),
        Node(
            package="gst_ros",
            executable="gst_node",
            name="gst_node",
            output="screen",
            parameters=[config, {"model_dir": LaunchConfiguration("model_dir"), "autostart": True,
                                 "cameras": ["camera"]}],
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", rviz_config],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
