"""CPU renderer: a pybullet client (p.DIRECT, ER_TINY_RENDERER) holding one scene at a time.

    r = Renderer()
    info = r.load_scene(spec)                 # SceneSpec -> bodies in the pybullet world
    out = r.render(K, w2c, width, height)     # RenderResult: rgb, depth, mask
    r.close()

The camera is ours (gst_ros.geometry): K in pixels (top-left pixel centre at (0, 0)) for a
width x height image, w2c world-to-camera with OpenCV optical axes. gst_ros.sim.pybullet_camera
turns them into pybullet's matrices so the image is rendered by exactly that camera.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import numpy as np
import pybullet_data

from gst_ros.geometry import GeometryError, check_intrinsics, check_pose

from .pybullet_camera import depth_from_buffer, projection_list_from_K, view_matrix_from_w2c
from .scene import SceneSpec, object_urdf


def _import_without_banner(name: str):
    """Import module `name` with this process's standard error (file descriptor 2) sent to
    /dev/null meanwhile: pybullet prints its build time from C when imported, into the output of
    every command and render worker that uses it (`gst render --quiet` included). An import that
    fails still raises its exception."""
    if name in sys.modules:
        return sys.modules[name]
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        return importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


p = _import_without_banner("pybullet")

DATA_DIR = pybullet_data.getDataPath()


@dataclass
class SceneInfo:
    center: np.ndarray      # (3,) centre of the objects' bounding box, world frame
    radius: float           # half the diagonal of that box (scene units)
    bodies: list[int]       # pybullet body ids of the objects, mask value i+1 for bodies[i]


@dataclass
class RenderResult:
    rgb: np.ndarray         # (H, W, 3) uint8 RGB
    depth: np.ndarray       # (H, W) float32, camera z in scene units; inf where nothing was hit
    mask: np.ndarray        # (H, W) uint8: 0 background / ground, i for the scene's i-th object


class Renderer:
    """One pybullet DIRECT client. Not thread-safe; use one per process."""

    def __init__(self):
        self.client = p.connect(p.DIRECT)
        self._unit_extent: dict[str, float] = {}
        self._textures: dict[str, int] = {}
        self.spec: SceneSpec | None = None
        self.info: SceneInfo | None = None
        self._ground = -1
        self._body_to_index = np.zeros(0, dtype=np.uint8)

    # --------------------------------------------------------------------------------- scene

    def _aabb(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        """World AABB of all links of `body`."""
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for link in range(-1, p.getNumJoints(body, physicsClientId=self.client)):
            a, b = p.getAABB(body, link, physicsClientId=self.client)
            lo, hi = np.minimum(lo, a), np.maximum(hi, b)
        return lo, hi

    def _load(self, urdf: str, scale: float) -> int:
        path = os.path.join(DATA_DIR, urdf)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pybullet_data object not found: {path}")
        return p.loadURDF(path, globalScaling=scale, useFixedBase=True, physicsClientId=self.client)

    def unit_extent(self, name: str) -> float:
        """Largest bounding-box extent of object `name` at its URDF scale (cached)."""
        if name not in self._unit_extent:
            b = self._load(object_urdf(name), 1.0)
            lo, hi = self._aabb(b)
            p.removeBody(b, physicsClientId=self.client)
            ext = float(np.max(hi - lo))
            if not np.isfinite(ext) or ext <= 0:
                raise ValueError(f"object {name!r} has an empty bounding box")
            self._unit_extent[name] = ext
        return self._unit_extent[name]

    def _texture(self, filename: str) -> int:
        if filename not in self._textures:
            self._textures[filename] = p.loadTexture(os.path.join(DATA_DIR, filename),
                                                     physicsClientId=self.client)
        return self._textures[filename]

    def load_scene(self, spec: SceneSpec) -> SceneInfo:
        """Replace the current world by `spec`'s objects (scaled to their `size`, standing on
        z = 0) and ground plane. Returns the objects' bounding box centre and radius."""
        if not spec.objects:
            raise ValueError(f"scene {spec.scene_id!r} has no objects")
        p.resetSimulation(physicsClientId=self.client)
        self._textures.clear()  # resetSimulation drops textures
        bodies = []
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for obj in spec.objects:
            scale = obj.size / self.unit_extent(obj.name)
            b = self._load(object_urdf(obj.name), scale)
            q = p.getQuaternionFromEuler([0.0, 0.0, obj.yaw])
            p.resetBasePositionAndOrientation(b, [obj.xy[0], obj.xy[1], 0.0], q, physicsClientId=self.client)
            a, c = self._aabb(b)
            # stand on the ground: shift so the lowest point is at z = 0
            p.resetBasePositionAndOrientation(b, [obj.xy[0], obj.xy[1], -a[2]], q,
                                              physicsClientId=self.client)
            a, c = a - [0, 0, a[2]], c - [0, 0, a[2]]
            lo, hi = np.minimum(lo, a), np.maximum(hi, c)
            bodies.append(b)
        self._ground = -1
        if spec.ground:
            self._ground = p.loadURDF(os.path.join(DATA_DIR, "plane.urdf"), useFixedBase=True,
                                      physicsClientId=self.client)
            kw = {"rgbaColor": list(spec.ground_rgba)}
            if spec.ground_texture:
                kw["textureUniqueId"] = self._texture(spec.ground_texture)
            p.changeVisualShape(self._ground, -1, physicsClientId=self.client, **kw)
        self._body_to_index = np.zeros(max(bodies) + 2, dtype=np.uint8)
        for i, b in enumerate(bodies):
            self._body_to_index[b] = i + 1
        self.spec = spec
        self.info = SceneInfo(center=(lo + hi) / 2, radius=float(np.linalg.norm(hi - lo) / 2), bodies=bodies)
        return self.info

    def add_marker(self, position, radius: float, rgba=(1.0, 0.0, 0.0, 1.0)) -> int:
        """Add a small sphere (a visual-only marker) at world `position`; returns its mask value."""
        if self.info is None:
            raise RuntimeError("add_marker: load a scene first")
        vis = p.createVisualShape(p.GEOM_SPHERE, radius=float(radius), rgbaColor=list(rgba),
                                  physicsClientId=self.client)
        b = p.createMultiBody(baseVisualShapeIndex=vis, basePosition=[float(v) for v in position],
                              physicsClientId=self.client)
        self.info.bodies.append(b)
        if len(self.info.bodies) > 255:
            raise ValueError("at most 255 objects per scene (uint8 mask)")
        if b >= len(self._body_to_index):
            self._body_to_index = np.concatenate(
                [self._body_to_index, np.zeros(b + 1 - len(self._body_to_index), np.uint8)])
        self._body_to_index[b] = len(self.info.bodies)
        return len(self.info.bodies)

    # -------------------------------------------------------------------------------- render

    def clip_planes(self) -> tuple[float, float]:
        """(near, far) for the current scene: near well inside any sensible camera distance."""
        r = self.info.radius if self.info is not None else 1.0
        return 0.01 * r, 100.0 * max(r, 1.0)

    def render(self, K: np.ndarray, w2c: np.ndarray, width: int, height: int) -> RenderResult:
        """Render the loaded scene from camera (K, w2c): K pixels for a width x height image
        (top-left pixel centre at (0, 0)), w2c world-to-camera with OpenCV axes."""
        if self.spec is None:
            raise RuntimeError("render: load a scene first (Renderer.load_scene)")
        try:
            check_intrinsics(np.asarray(K, dtype=np.float64))
            check_pose(np.asarray(w2c, dtype=np.float64))
        except GeometryError as e:
            raise ValueError(f"render: bad camera: {e}") from e
        width, height = int(width), int(height)
        if not (1 <= width <= 4096 and 1 <= height <= 4096):
            raise ValueError(f"render: image size must be 1..4096 pixels a side, got {width}x{height}")
        near, far = self.clip_planes()
        light = self.spec.light
        _, _, rgba, zbuf, seg = p.getCameraImage(
            width, height, view_matrix_from_w2c(w2c), projection_list_from_K(K, width, height, near, far),
            renderer=p.ER_TINY_RENDERER, shadow=int(light.shadow), lightDirection=list(light.direction),
            lightColor=list(light.color), lightAmbientCoeff=light.ambient,
            lightDiffuseCoeff=light.diffuse, lightSpecularCoeff=light.specular,
            physicsClientId=self.client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()
        seg = np.asarray(seg, dtype=np.int64).reshape(height, width)
        depth = depth_from_buffer(np.asarray(zbuf, dtype=np.float32).reshape(height, width), near, far)
        empty = seg < 0
        depth[empty] = np.inf
        rgb[empty] = self._background(height, width)[empty]
        mask = np.zeros((height, width), dtype=np.uint8)
        hit = (seg >= 0) & (seg < len(self._body_to_index))
        mask[hit] = self._body_to_index[seg[hit]]
        return RenderResult(rgb=rgb, depth=depth, mask=mask)

    def _background(self, height: int, width: int) -> np.ndarray:
        """(H, W, 3) uint8 vertical gradient from the spec's top to bottom colour."""
        top = np.asarray(self.spec.background_top, dtype=np.float64)
        bottom = np.asarray(self.spec.background_bottom, dtype=np.float64)
        a = np.linspace(0.0, 1.0, height)[:, None]
        col = np.round(top * (1 - a) + bottom * a).astype(np.uint8)
        return np.broadcast_to(col[:, None, :], (height, width, 3))

    def close(self) -> None:
        if self.client is not None and self.client >= 0:
            try:
                p.disconnect(physicsClientId=self.client)
            except p.error:
                pass
            self.client = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
