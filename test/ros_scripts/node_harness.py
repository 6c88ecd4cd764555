"""Test harness for gst_node: start the node in its own process, and a probe node in the test
process that publishes inputs and records outputs. Waits on matches and messages, never on fixed
sleeps. Environment (localhost-only discovery, private domain) comes from test/conftest.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

REPO = Path(__file__).resolve().parents[2]


def write_params(path: Path, params: dict, node_name: str = "/**") -> Path:
    """A ROS params file for `node_name` (default: every node) holding `params`."""
    path.write_text(yaml.safe_dump({node_name: {"ros__parameters": params}}))
    return path


def start_node(params_file: Path, extra_args=(), log_path: Path | None = None) -> subprocess.Popen:
    """gst_node in a separate process (python -m gst_ros.ros.gst_node), output to `log_path`."""
    cmd = [sys.executable, "-m", "gst_ros.ros.gst_node", "--ros-args", "--params-file", str(params_file),
           *extra_args]
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed by the OS at exit)
    return subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT (clean rclpy shutdown), then SIGKILL if it does not end."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def rss_kib(pid: int) -> int:
    """Resident set size of a process (KiB) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def latched() -> QoSProfile:
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Probe:
    """An rclpy node in the test process: publishers, recorded subscriptions, spin helpers."""

    def __init__(self, name: str = "gst_test_probe"):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.got: dict[str, list] = {}

    def record(self, msg_type, topic: str, qos=10, key: str | None = None) -> list:
        key = key or topic
        box = self.got.setdefault(key, [])
        self.node.create_subscription(msg_type, topic, box.append, qos)
        return box

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def spin_until(self, predicate, timeout: float, proc: subprocess.Popen | None = None,
                   what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.05)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"gst_node exited with {proc.returncode} while waiting for {what}")
        if not predicate():
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_matched(self, pub, timeout: float = 30.0, proc=None) -> None:
        self.spin_until(lambda: pub.get_subscription_count() > 0, timeout, proc,
                        f"a subscriber on {pub.topic_name}")

    def call(self, client, request, timeout: float = 30.0, proc=None):
        """Call a service and wait for the reply. A request sent right after discovery can be lost
        (the server's reply writer may not have matched our reader yet), so it is re-sent every
        2 s until a reply arrives."""
        self.spin_until(lambda: client.service_is_ready(), timeout, proc, f"service {client.srv_name}")
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            try:
                self.spin_until(future.done, min(2.0, max(0.1, deadline - time.monotonic())), proc)
                return future.result()
            except AssertionError:
                client.remove_pending_request(future)
                if time.monotonic() >= deadline:
                    raise AssertionError(f"no reply from {client.srv_name} within {timeout} s") from None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def diagnostics_values(arr: DiagnosticArray, name_suffix: str) -> dict:
    """{key: value} of the status whose name ends with `name_suffix` (values parsed as numbers)."""
    for st in arr.status:
        if st.name.endswith(name_suffix):
            out = {"_level": st.level, "_message": st.message}
            for kv in st.values:
                try:
                    out[kv.key] = float(kv.value)
                except ValueError:
                    out[kv.key] = kv.value
            return out
    raise KeyError(f"no diagnostics status named *{name_suffix}; have {[s.name for s in arr.status]}")
