"""Camera samplers around a scene: random look-at views on a sphere, and smooth orbits.

All poses are world-to-camera 4x4 float64 (OpenCV optical axes: x right, y down, z forward),
built with gst_ros.geometry.look_at; world z is up. Angles are in degrees in the configs.
Distances are in units of the scene radius (half the diagonal of the objects' bounding box),
so a config frames a small and a large scene alike. Elevation is the angle of the camera
centre above the horizontal plane through the look-at target; azimuth is measured from world +x
towards +y.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gst_ros.geometry import intrinsics_from_fov, look_at, make_pose, so3_exp

GST_FOV_DEG = 49.1  # vertical FOV of the Zero-1-to-3 / GST Objaverse renders
TRAJECTORIES = ("sphere", "orbit")


def _eye(center: np.ndarray, radius: float, elevation_deg: float, azimuth_deg: float,
         distance: float) -> np.ndarray:
    """World position at `distance` scene radii from `center` in direction (elevation, azimuth)."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return np.asarray(center, dtype=np.float64) + distance * radius * d


def _rolled(w2c: np.ndarray, roll_deg: float) -> np.ndarray:
    """w2c with the camera rotated by `roll_deg` about its own optical (z) axis."""
    if roll_deg == 0.0:
        return w2c
    Rz = so3_exp(torch.tensor([0.0, 0.0, math.radians(roll_deg)], dtype=torch.float64)).numpy()
    return make_pose(Rz, np.zeros(3)) @ w2c


@dataclass
class SphereCameras:
    """Independent look-at views on a sphere around the scene (Objaverse-like regime)."""
    elevation_deg: tuple[float, float] = (5.0, 60.0)
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    distance: tuple[float, float] = (1.8, 2.6)      # scene radii
    roll_deg: float = 3.0                            # uniform in [-roll, roll]
    target_jitter: float = 0.05                      # scene radii, per axis, uniform
    fov_deg: tuple[float, float] = (GST_FOV_DEG, GST_FOV_DEG)  # vertical FOV range

    def sample(self, rng: np.random.Generator, n: int, center, radius: float,
               width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(K (n,3,3), w2c (n,4,4)) of `n` random cameras looking at `center` (world, z up)."""
        if n < 1:
            raise ValueError(f"need at least one view, got {n}")
        Ks, w2cs = [], []
        for _ in range(n):
            eye = _eye(center, radius, rng.uniform(*self.elevation_deg), rng.uniform(*self.azimuth_deg),
                       rng.uniform(*self.distance))
            jitter = rng.uniform(-1, 1, 3) * self.target_jitter * radius
            target = np.asarray(center, dtype=np.float64) + jitter
            w2c = _rolled(look_at(eye, target), rng.uniform(-self.roll_deg, self.roll_deg))
            Ks.append(intrinsics_from_fov(rng.uniform(*self.fov_deg), width, height, axis="y"))
            w2cs.append(w2c)
        return np.stack(Ks), np.stack(w2cs)


@dataclass
class Orbit:
    """One smooth robot-like camera path: the azimuth advances at constant speed while
    elevation, distance and the look-at point drift along slow sinusoids. Phase t is in periods
    (t = 1 is one full cycle of the sinusoids and `sweep_deg` of azimuth)."""
    azimuth0_deg: float = 0.0
    sweep_deg: float = 360.0
    elevation_deg: float = 30.0
    elevation_amplitude_deg: float = 10.0
    distance: float = 2.2            # scene radii
    distance_amplitude: float = 0.1  # fraction of `distance`
    target_wobble: float = 0.05      # scene radii
    phase: float = 0.0               # radians, offsets the sinusoids

    def pose(self, t: float, center, radius: float) -> np.ndarray:
        """World-to-camera (4,4) at phase `t` (float, periods) around `center` (world, z up)."""
        w = 2 * math.pi * t + self.phase
        el = self.elevation_deg + self.elevation_amplitude_deg * math.sin(w)
        dist = self.distance * (1 + self.distance_amplitude * math.sin(2 * w + 1.0))
        eye = _eye(center, radius, el, self.azimuth0_deg + self.sweep_deg * t, dist)
        wob = np.array([math.sin(w + 0.5), math.cos(1.5 * w), 0.5 * math.sin(w)])
        wob *= self.target_wobble * radius
        return look_at(eye, np.asarray(center, dtype=np.float64) + wob)


@dataclass
class OrbitCameras:
    """Ranges from which a random Orbit is drawn per scene."""
    elevation_deg: tuple[float, float] = (15.0, 45.0)
    elevation_amplitude_deg: tuple[float, float] = (0.0, 12.0)
    sweep_deg: tuple[float, float] = (180.0, 360.0)
    distance: tuple[float, float] = (1.9, 2.5)
    fov_deg: float = GST_FOV_DEG

    def draw(self, rng: np.random.Generator) -> Orbit:
        """A random Orbit within these ranges (random start azimuth and direction of travel)."""
        direction = 1.0 if rng.random() < 0.5 else -1.0
        return Orbit(azimuth0_deg=float(rng.uniform(0, 360)),
                     sweep_deg=direction * float(rng.uniform(*self.sweep_deg)),
                     elevation_deg=float(rng.uniform(*self.elevation_deg)),
                     elevation_amplitude_deg=float(rng.uniform(*self.elevation_amplitude_deg)),
                     distance=float(rng.uniform(*self.distance)),
                     phase=float(rng.uniform(0, 2 * math.pi)))

    def sample(self, rng: np.random.Generator, n: int, center, radius: float,
               width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(K (n,3,3), w2c (n,4,4)): `n` evenly spaced poses along one random orbit."""
        if n < 1:
            raise ValueError(f"need at least one view, got {n}")
        orbit = self.draw(rng)
        K = intrinsics_from_fov(self.fov_deg, width, height, axis="y")
        w2c = np.stack([orbit.pose(i / n, center, radius) for i in range(n)])
        return np.repeat(K[None], n, axis=0), w2c


def camera_sampler(trajectory: str) -> SphereCameras | OrbitCameras:
    """Default sampler for a trajectory name ('sphere' or 'orbit')."""
    if trajectory == "sphere":
        return SphereCameras()
    if trajectory == "orbit":
        return OrbitCameras()
    raise ValueError(f"unknown trajectory {trajectory!r}; expected one of {TRAJECTORIES}")
