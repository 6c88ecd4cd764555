"""gst_ros: ament_python package; also installs with plain pip into a venv."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "gst_ros"


def tree(folder):
    """data_files entries installing every file under `folder` into share/gst_ros/<folder>."""
    out = {}
    for path in glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            out.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "tests", "tests.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("models"),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools", "numpy", "pyyaml", "safetensors", "tqdm"],
    extras_require={
        # the model runtime (CPU); pin torch so pip never pulls a multi-GB CUDA build by accident
        "model": ["torch==2.13.0", "onnxruntime", "onnx", "opencv-python-headless<5",
                  "transforms3d", "pybullet", "pillow", "matplotlib"],
        # ONNX Runtime with CUDA; conflicts with plain onnxruntime in one environment
        "gpu": ["onnxruntime-gpu"],
        "test": ["pytest", "pytest-timeout", "hypothesis", "ruff"],
    },
    zip_safe=True,
    maintainer="gst_ros developers",
    maintainer_email="gst_ros@example.com",
    description="Generative Spatial Transformer pose estimation and novel views for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gst = gst_ros.cli:main",
            "gst_node = gst_ros.ros.gst_node:main",
            "sim_camera_node = gst_ros.ros.sim_camera_node:main",
        ],
    },
)
