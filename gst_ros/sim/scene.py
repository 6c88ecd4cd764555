"""Scenes made of pybullet_data objects: what a scene is (SceneSpec), how to draw one at random.

A scene is one or a few objects standing upright on a ground plane (or floating over nothing,
Objaverse-like), a light, and a background gradient. The spec is plain data (JSON-able, saved
with every rendered scene); gst_ros.sim.renderer turns it into a pybullet world.

World frame: z up, ground plane z = 0, units are "scene units" (objects are rescaled so their
largest extent is `size`, about 1, like Objaverse's unit bounding box).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

# Named catalogue: name -> URDF path relative to pybullet_data. The first group carries real
# textures (image maps); the second group are single-colour meshes with interesting shapes.
TEXTURED_OBJECTS = {
    "duck": "duck_vhacd.urdf",
    "jenga": "jenga/jenga.urdf",
    "domino": "domino/domino.urdf",
    "tray": "tray/tray.urdf",
    "soccerball": "soccerball.urdf",
    "table": "table/table.urdf",
    "textured_sphere": "sphere_small.urdf",
}
SHAPE_OBJECTS = {
    "cube": "cube.urdf",
    "mug": "objects/mug.urdf",
    "teddy": "teddy_vhacd.urdf",
    "lego": "lego/lego.urdf",
}
CATALOGUE = {**TEXTURED_OBJECTS, **SHAPE_OBJECTS}
NUM_RANDOM_URDFS = 1000  # pybullet_data/random_urdfs/000 .. 999
# random_urdfs whose mesh cannot be rendered: 168.obj has only NaN vertices (empty bounding box)
BROKEN_RANDOM_URDFS = frozenset({168})
OBJECT_SETS = ("textured", "random", "mixed")
# textures (files in pybullet_data) the ground plane may wear; None = plain colour
GROUND_TEXTURES = (None, "checker_blue.png", "tex256.png", "checker_grid.jpg")


def random_urdf_name(i: int) -> str:
    return f"random_{i:03d}"


def object_urdf(name: str) -> str:
    """URDF path (relative to pybullet_data) of catalogue object `name` or `random_NNN`."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name.startswith("random_") and name[7:].isdigit() and 0 <= int(name[7:]) < NUM_RANDOM_URDFS:
        i = int(name[7:])
        return f"random_urdfs/{i:03d}/{i:03d}.urdf"
    raise ValueError(
        f"unknown object {name!r}: expected one of {sorted(CATALOGUE)} or random_000..random_999")


def object_pool(objects: str) -> list[str]:
    """All object names of an object set: 'textured' (the named catalogue), 'random' (the
    random_urdfs but the BROKEN_RANDOM_URDFS) or 'mixed' (both)."""
    if objects == "textured":
        return sorted(CATALOGUE)
    if objects == "random":
        return [random_urdf_name(i) for i in range(NUM_RANDOM_URDFS) if i not in BROKEN_RANDOM_URDFS]
    if objects == "mixed":
        return object_pool("textured") + object_pool("random")
    raise ValueError(f"unknown object set {objects!r}; expected one of {OBJECT_SETS}")


def split_objects(pool: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (train_objects, test_objects) partition of `pool`: a `test_fraction` share
    (at least one object when the fraction is > 0 and the pool has two or more), drawn with
    `seed`. In a mixed pool the catalogue and the random objects are split separately, so both
    kinds appear on both sides."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test object fraction must be in [0, 1), got {test_fraction}")
    groups = [[n for n in pool if not n.startswith("random_")], [n for n in pool if n.startswith("random_")]]
    train, test = [], []
    rng = np.random.default_rng([seed, 0x0B1EC7])
    for g in groups:
        if not g:
            continue
        g = sorted(g)
        k = 0 if test_fraction == 0 or len(g) < 2 else max(1, round(len(g) * test_fraction))
        order = rng.permutation(len(g))
        test += [g[i] for i in order[:k]]
        train += [g[i] for i in order[k:]]
    return sorted(train), sorted(test)


@dataclass
class ObjectSpec:
    name: str                       # catalogue name or random_NNN
    size: float = 1.0               # largest extent after scaling (scene units)
    xy: tuple[float, float] = (0.0, 0.0)  # position on the ground plane
    yaw: float = 0.0                # rotation about world z (radians)


@dataclass
class LightSpec:
    direction: tuple[float, float, float] = (1.0, 1.0, 2.0)  # towards the light, world frame
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.5
    diffuse: float = 0.5
    specular: float = 0.1
    shadow: bool = False


@dataclass
class SceneSpec:
    scene_id: str
    objects: list[ObjectSpec]
    ground: bool = True
    ground_texture: str | None = None
    ground_rgba: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    background_top: tuple[int, int, int] = (255, 255, 255)      # RGB, top image row
    background_bottom: tuple[int, int, int] = (255, 255, 255)   # RGB, bottom image row
    light: LightSpec = field(default_factory=LightSpec)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SceneSpec:
        d = dict(d)
        d["objects"] = [ObjectSpec(**{**o, "xy": tuple(o["xy"])}) for o in d["objects"]]
        d["light"] = LightSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["light"].items()})
        for k in ("ground_rgba", "background_top", "background_bottom"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class SceneSampler:
    """Ranges for random scenes. Sizes are in scene units."""
    objects_per_scene: tuple[int, int] = (1, 1)   # inclusive range
    size: tuple[float, float] = (0.7, 1.0)        # largest extent of each object
    ground_probability: float = 0.7
    shadow_probability: float = 0.2
    light_elevation_deg: tuple[float, float] = (25.0, 80.0)

    def sample(self, rng: np.random.Generator, scene_id: str, pool: list[str]) -> SceneSpec:
        """A random SceneSpec whose objects come from `pool` (distinct objects per scene)."""
        if not pool:
            raise ValueError("cannot build a scene: the object pool is empty")
        lo, hi = self.objects_per_scene
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_scene must satisfy 1 <= lo <= hi, got {self.objects_per_scene}")
        n = int(rng.integers(lo, hi + 1))
        n = min(n, len(pool))
        # a mixed pool: each object is a catalogue or a random object with equal odds
        groups = [g for g in ([o for o in pool if not o.startswith("random_")],
                              [o for o in pool if o.startswith("random_")]) if g]
        names: list[str] = []
        while len(names) < n:
            g = groups[int(rng.integers(len(groups)))]
            name = g[int(rng.integers(len(g)))]
            if name not in names:
                names.append(name)
        sizes = rng.uniform(*self.size, size=n)
        xy = _place_on_ground(rng, sizes)
        objects = [ObjectSpec(name=nm, size=float(s), xy=(float(p[0]), float(p[1])),
                              yaw=float(rng.uniform(0, 2 * math.pi)))
                   for nm, s, p in zip(names, sizes, xy)]
        ground = bool(rng.random() < self.ground_probability)
        tex = GROUND_TEXTURES[int(rng.integers(len(GROUND_TEXTURES)))]
        tint = rng.uniform(0.55, 1.0, size=3)
        top = rng.integers(120, 256, size=3)
        bottom = np.clip(top.astype(int) - rng.integers(0, 100, size=3), 0, 255)
        el = math.radians(rng.uniform(*self.light_elevation_deg))
        az = rng.uniform(0, 2 * math.pi)
        light = LightSpec(
            direction=(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)),
            color=tuple(float(c) for c in rng.uniform(0.85, 1.0, size=3)),
            ambient=float(rng.uniform(0.35, 0.7)),
            diffuse=float(rng.uniform(0.3, 0.7)),
            specular=float(rng.uniform(0.0, 0.3)),
            shadow=bool(ground and rng.random() < self.shadow_probability),
        )
        return SceneSpec(scene_id=scene_id, objects=objects, ground=ground, ground_texture=tex,
                         ground_rgba=(*(float(c) for c in tint), 1.0),
                         background_top=tuple(int(c) for c in top),
                         background_bottom=tuple(int(c) for c in bottom), light=light)


def _place_on_ground(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """(n, 2) ground positions for objects of largest extent `sizes`, footprints (discs of
    radius size/2) not overlapping where rejection sampling finds room; the first at the origin."""
    n = len(sizes)
    pos = np.zeros((n, 2))
    spread = 0.6 * float(np.sum(sizes))
    for i in range(1, n):
        for _ in range(100):
            p = rng.uniform(-spread, spread, size=2)
            gaps = np.linalg.norm(pos[:i] - p, axis=1) - 0.5 * (sizes[:i] + sizes[i])
            if np.all(gaps > 0.05):
                break
        pos[i] = p
    return pos - pos.mean(axis=0)
