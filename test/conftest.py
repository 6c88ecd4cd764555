"""Test-wide settings. ROS traffic stays on this machine: localhost-only discovery and a private
domain id for the whole run, set before anything imports rclpy (subprocesses inherit them)."""
import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
if "GST_TEST_ROS_DOMAIN_ID" in os.environ:
    os.environ["ROS_DOMAIN_ID"] = os.environ["GST_TEST_ROS_DOMAIN_ID"]
elif "ROS_DOMAIN_ID" not in os.environ or os.environ.get("ROS_DOMAIN_ID") in ("", "0"):
    # a private id per run: 1..100 (safe port range on Linux), never the default 0
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("PYTHONHASHSEED", "0")
# One intra-op thread for the whole suite: the tests run many small tensor ops, and on 2 CPU
# cores extra OpenMP threads only contend (measured 5-10x slower under load). Subprocesses
# (nodes, torchrun workers) inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
