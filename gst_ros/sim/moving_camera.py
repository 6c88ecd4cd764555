"""The simulated camera's world: one seed -> a scene and a camera path, frame by frame.

sim_camera_node publishes these frames on ROS topics; training.evaluate_tracking replays them
offline. Both draw from one random generator in the same order (the scene's objects, then the
orbit; the sphere trajectory keeps drawing from it frame by frame), so a seed gives the same
scene, path and images in both.
"""
from __future__ import annotations

import numpy as np

from gst_ros.geometry import intrinsics_from_fov
from gst_ros.sim.cameras import GST_FOV_DEG, TRAJECTORIES, OrbitCameras, SphereCameras
from gst_ros.sim.renderer import Renderer
from gst_ros.sim.scene import SceneSampler, object_pool


class MovingCamera:
    """A pybullet scene of `num_objects` objects from the set `objects` and a camera moving
    around it (`trajectory` "orbit": frame k at time k / rate_hz on an orbit of period_s seconds;
    "sphere": a random view per frame), square pixels with a vertical field of view fov_deg.
    camera_at(k) is frame k's world-to-camera (4,4) (OpenCV optical axes, world z up, metres);
    render(k) its (H,W,3) uint8 RGB image and that pose. Call close() when done."""

    def __init__(self, seed: int, width: int, height: int, fov_deg: float = GST_FOV_DEG,
                 objects: str = "textured", num_objects: int = 1, trajectory: str = "orbit",
                 rate_hz: float = 10.0, period_s: float = 20.0):
        if trajectory not in TRAJECTORIES:
            raise ValueError(f"trajectory must be one of {TRAJECTORIES}, got {trajectory!r}")
        if rate_hz <= 0 or period_s <= 0:
            raise ValueError(f"rate_hz and period_s must be > 0, got {rate_hz}, {period_s}")
        self.width, self.height, self.trajectory = int(width), int(height), trajectory
        self.rate_hz, self.period_s = float(rate_hz), float(period_s)
        self.rng = np.random.default_rng(int(seed))
        self.spec = SceneSampler(objects_per_scene=(num_objects, num_objects)).sample(
            self.rng, "sim_camera", object_pool(objects))
        self.renderer = Renderer()
        self.scene = self.renderer.load_scene(self.spec)
        self.sphere = SphereCameras(fov_deg=(fov_deg, fov_deg))
        self.orbit = OrbitCameras(fov_deg=fov_deg).draw(self.rng)
        self.K = intrinsics_from_fov(fov_deg, self.width, self.height, axis="y")

    def camera_at(self, frame: int) -> np.ndarray:
        """World-to-camera (4,4) of frame `frame` (OpenCV optical axes, world z up)."""
        if self.trajectory == "orbit":
            t = frame / self.rate_hz / self.period_s
            return self.orbit.pose(t, self.scene.center, self.scene.radius)
        _, w2c = self.sphere.sample(self.rng, 1, self.scene.center, self.scene.radius,
                                    self.width, self.height)
        return w2c[0]

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB (H,W,3) uint8, w2c (4,4)) of frame `frame`."""
        w2c = self.camera_at(frame)
        return self.renderer.render(self.K, w2c, self.width, self.height).rgb, w2c

    def close(self) -> None:
        self.renderer.close()
