"""Synthetic multi-view data: pybullet scenes, camera samplers, renderer and data-set writer.

No ROS here (gst_ros.ros.sim_camera_node is the ROS adapter). pybullet is imported only by
gst_ros.sim.renderer, so the pure-numpy parts (scene specs, cameras, matrices) import cheaply.
"""
