"""The simulated set-up of launch/sim.launch.py without the `launch` package: the simulated camera
and gst_node, each in its own process, wired the same way (the camera publishes
camera/image_raw + camera/camera_info, gst_node estimates it against its first frame).

    python -m gst_ros.ros.stack [--model DIR] [--rate 5] [--log-dir outputs/stack]

Runs until Ctrl-C or until one of the nodes exits. ROS stays on this machine unless you set
ROS_AUTOMATIC_DISCOVERY_RANGE yourself (default here: LOCALHOST), and a private ROS_DOMAIN_ID is
picked when none is set. rviz2 (where installed) can then show it with config/gst.rviz.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gst_ros.ros.params import BY_NAME

NODE_NAME = "gst_node"
SIM_NODE_NAME = "sim_camera"
CAMERA = "camera"   # camera name inside gst_node: topics camera/image_raw, camera/camera_info


def find_config(name: str = "gst.yaml") -> Path:
    """config/<name> of the source tree, else of an install (<prefix>/share/gst_ros/config)."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "config" / name]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / "gst_ros" / "config" / name for p in prefixes]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"config file {name} not found in {[str(c) for c in candidates]}")


def ros_env(domain_id: int | None = None) -> dict:
    """This process's environment with ROS kept local: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
    unless already set, and ROS_DOMAIN_ID = `domain_id`, else the current one, else a private id
    in 1..100 derived from the process id (never the shared default 0)."""
    env = os.environ.copy()
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    elif env.get("ROS_DOMAIN_ID", "") in ("", "0"):
        env["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
    return env


def node_parameters(overrides: dict) -> dict:
    """config/gst.yaml's gst_node parameters with `overrides` applied (names checked)."""
    unknown = sorted(set(overrides) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown gst_node parameters {unknown}")
    data = yaml.safe_load(find_config().read_text()) or {}
    params = dict(data.get(NODE_NAME, {}).get("ros__parameters", {}))
    params.update(overrides)
    return params


def sim_parameters(rate_hz: float, width: int, height: int, seed: int, trajectory: str = "orbit",
                   period_s: float = 20.0, num_objects: int = 2) -> dict:
    """Parameters of sim_camera_node publishing where gst_node's camera `camera` listens: the
    regime of the shipped model's training renders (two catalogue objects, a camera orbiting them)."""
    return {"image_topic": f"{CAMERA}/image_raw", "camera_info_topic": f"{CAMERA}/camera_info",
            "rate_hz": float(rate_hz), "width": int(width), "height": int(height), "seed": int(seed),
            "trajectory": trajectory, "period_s": float(period_s), "objects": "textured",
            "num_objects": int(num_objects)}


class Stack:
    """The two processes; use as a context manager (always terminated on exit)."""

    def __init__(self, node_params: dict, sim_params: dict, log_dir, env: dict | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env if env is not None else ros_env()
        self.node_params, self.sim_params = node_params, sim_params
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs = []

    def _spawn(self, name: str, module: str, node_name: str, params: dict) -> None:
        pfile = self.log_dir / f"{name}.params.yaml"
        pfile.write_text(yaml.safe_dump({node_name: {"ros__parameters": params}}))
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, "--ros-args", "--params-file", str(pfile)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> Stack:
        self._spawn(NODE_NAME, "gst_ros.ros.gst_node", NODE_NAME, self.node_params)
        self._spawn(SIM_NODE_NAME, "gst_ros.ros.sim_camera_node", SIM_NODE_NAME, self.sim_params)
        return self

    def dead(self) -> list[tuple[str, int]]:
        """(name, exit code) of every process that has exited."""
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(2)   # SIGINT: rclpy shuts down cleanly
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for f in self._logs:
            f.close()
        self._logs = []

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gst_ros.ros.stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="GST model directory (default: the shipped model)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--rate", type=float, default=5.0, help="simulated camera rate (Hz)")
    ap.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("W", "H"), help="image size")
    ap.add_argument("--seed", type=int, default=0, help="scene and trajectory seed")
    ap.add_argument("--log-dir", default="outputs/stack", help="where the node logs and params files go")
    args = ap.parse_args(argv)
    node = node_parameters({"model_dir": args.model, "device": args.device, "autostart": True,
                            "cameras": [CAMERA]})
    sim = sim_parameters(args.rate, args.size[0], args.size[1], args.seed)
    env = ros_env()
    print(f"[stack] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} "
          f"ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']}; logs in {args.log_dir}")
    with Stack(node, sim, args.log_dir, env) as stack:
        try:
            while not stack.dead():
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        for name, code in stack.dead():
            print(f"[stack] {name} exited with {code}:\n{stack.log_tail(name)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
