"""gst_ros: Generative Spatial Transformer for ROS 2.

Layers (each imports only the ones below it):
  gst_ros.geometry  camera conventions, Plücker maps, rays -> cameras, pose metrics
  gst_ros.models    quantizer, tokenizers, transformer, sequence layout
  gst_ros.engine    weights, sampling, the four GST tasks, ONNX Runtime backend
  gst_ros.ros       the ROS 2 adapter (the only package using the ROS client library)
gst_ros.sim renders synthetic multi-view data with pybullet (no ROS).
"""

__version__ = "0.1.0"
