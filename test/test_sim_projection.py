"""The saved cameras are exactly the cameras that rendered the images: a marker sphere's
rendered pixel centroid equals the geometry layer's projection of its centre (within a pixel,
in practice ~0.1 px), for many random cameras, non-square images and off-centre principal
points; its rendered depth equals the projected depth minus the radius."""
import numpy as np
import pytest

p = pytest.importorskip("pybullet")

from gst_ros.geometry import intrinsics_from_fov, look_at, make_intrinsics, project_points  # noqa: E402
from gst_ros.sim.cameras import OrbitCameras, SphereCameras  # noqa: E402
from gst_ros.sim.pybullet_camera import depth_from_buffer, projection_matrix_from_K  # noqa: E402
from gst_ros.sim.renderer import Renderer  # noqa: E402
from gst_ros.sim.scene import ObjectSpec, SceneSpec  # noqa: E402


@pytest.fixture(scope="module")
def renderer():
    r = Renderer()
    yield r
    r.close()


def _marker_scene(renderer):
    spec = SceneSpec(scene_id="marker", objects=[ObjectSpec("random_000", size=0.3, xy=(2.0, 2.0))],
                     ground=False)
    renderer.load_scene(spec)


def test_marker_centroid_matches_projection(renderer):
    _marker_scene(renderer)
    rng = np.random.default_rng(123)
    errors, depth_err = [], []
    for _ in range(40):
        W, H = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        f = rng.uniform(60, 220)
        cx, cy = rng.uniform(0.3, 0.7) * W, rng.uniform(0.3, 0.7) * H
        K = make_intrinsics(f, f * rng.uniform(0.9, 1.1), cx, cy)
        X = rng.uniform(-0.3, 0.3, size=3)
        r = 0.012
        spec_bodies = len(renderer.info.bodies)
        label = renderer.add_marker(X, r)
        assert label == spec_bodies + 1
        eye = X + rng.normal(size=3)
        eye = X + (eye - X) / np.linalg.norm(eye - X) * rng.uniform(0.5, 1.0)
        w2c = look_at(eye, X + rng.uniform(-0.1, 0.1, 3))
        out = renderer.render(K, w2c, W, H)
        uv, z = project_points(K, w2c, X[None])
        vv, uu = np.nonzero(out.mask == label)
        p.removeBody(renderer.info.bodies.pop(), physicsClientId=renderer.client)
        inside = len(uu) >= 4 and uu.min() > 0 and vv.min() > 0 and uu.max() < W - 1 and vv.max() < H - 1
        if not inside:
            continue
        errors.append([uu.mean() - uv[0, 0], vv.mean() - uv[0, 1]])
        # depth of the marker's nearest rendered point ~ centre depth - radius
        depth_err.append(out.depth[out.mask == label].min() - (z[0] - r))
    errors = np.array(errors)
    assert len(errors) >= 25, f"too few usable views ({len(errors)})"
    assert np.abs(errors).max() < 1.0, errors
    assert np.abs(errors.mean(axis=0)).max() < 0.1, errors.mean(axis=0)  # no half-pixel bias
    assert np.abs(depth_err).max() < 0.01, depth_err


def test_scene_sampler_cameras_see_the_scene(renderer):
    spec = SceneSpec(scene_id="duck", objects=[ObjectSpec("duck", size=1.0)], ground=True)
    info = renderer.load_scene(spec)
    lo, hi = renderer._aabb(info.bodies[0])
    assert abs(lo[2]) < 1e-6, "objects stand on the ground plane z = 0"
    assert np.isclose(np.max(hi - lo), 1.0, rtol=0.15), "largest extent is about the spec size"
    assert np.allclose(info.center, (lo + hi) / 2)
    rng = np.random.default_rng(0)
    for sampler in (SphereCameras(), OrbitCameras()):
        K, w2c = sampler.sample(rng, 5, info.center, info.radius, 96, 64)
        assert K.shape == (5, 3, 3) and w2c.shape == (5, 4, 4)
        for j in range(5):
            out = renderer.render(K[j], w2c[j], 96, 64)
            assert out.rgb.shape == (64, 96, 3) and out.rgb.dtype == np.uint8
            assert (out.mask == 1).mean() > 0.02, "the object should fill part of the view"
            uv, z = project_points(K[j], w2c[j], info.center[None])
            assert z[0] > 0 and 0 <= uv[0, 0] < 96 and 0 <= uv[0, 1] < 64


def test_projection_matrix_pixel_centres():
    """Pure maths: our projection sends the point seen at pixel centre (u, v) to the NDC the
    tiny renderer samples there: x = 2u/W - 1, y = 1 - 2(v+1)/H; depth buffer decodes to z."""
    K = intrinsics_from_fov(50.0, 80, 60)
    K[0, 2], K[1, 2] = 30.0, 35.0
    near, far = 0.05, 40.0
    P = projection_matrix_from_K(K, 80, 60, near, far)
    rng = np.random.default_rng(1)
    for _ in range(20):
        u, v, z = rng.uniform(0, 80), rng.uniform(0, 60), rng.uniform(0.1, 30)
        Xcv = np.linalg.inv(K) @ np.array([u, v, 1.0]) * z
        clip = P @ np.array([Xcv[0], -Xcv[1], -Xcv[2], 1.0])
        ndc = clip[:3] / clip[3]
        assert np.allclose(ndc[:2], [2 * u / 80 - 1, 1 - 2 * (v + 1) / 60])
        d = (ndc[2] + 1) / 2
        assert np.isclose(depth_from_buffer(np.array([d]), near, far)[0], z, rtol=1e-5)
