"""PairDataset: baseline ranges, relative pose = relative_pose of the two cameras (scale-normalised),
crops keep a 3D point on its image content, determinism, the generic-reader path, skips, collate."""
import cv2
import numpy as np
import pytest
import torch

from gst_ros.geometry import (
    blender_from_w2c,
    camera_center,
    intrinsics_from_fov,
    look_at,
    project_points,
    relative_pose,
)
from training.datasets.objaverse import ZERO123_FOV_DEG, ObjaverseDataset
from training.datasets.pairs import PairBatch, PairDataset, PairSample, collate_pairs

ALL_TRAIN = {"train": 1.0, "val": 0.0, "test": 0.0}
POINT = np.array([0.15, -0.1, 0.2])  # a world point drawn as a blob in every view
H, W = 64, 80
N_VIEWS = 12


def ring_cameras(radius=2.0, n=N_VIEWS):
    """OpenCV w2c of n cameras on a horizontal circle around the origin, 360/n degrees apart."""
    out = []
    for k in range(n):
        a = np.radians(360.0 * k / n)
        out.append(look_at([radius * np.cos(a), radius * np.sin(a), 0.0], [0.0, 0.0, 0.0]))
    return out


def blob_png(path, K, w2c):
    uv, depth = project_points(K, w2c, POINT[None])
    assert depth[0] > 0
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    g = np.exp(-((u - uv[0, 0]) ** 2 + (v - uv[0, 1]) ** 2) / (2 * 3.0**2))
    img = np.rint(255 * g).astype(np.uint8)
    bgra = np.dstack([img, img, img, np.full_like(img, 255)])
    cv2.imwrite(str(path), bgra)


@pytest.fixture(scope="module")
def objaverse_root(tmp_path_factory):
    """Two objects in the Zero-1-to-3 layout (RGBA png + Blender npy), 12 views each on a ring,
    80x64 images; plus an object with a single view (no pair possible)."""
    root = tmp_path_factory.mktemp("objaverse")
    K = intrinsics_from_fov(ZERO123_FOV_DEG, W, H)
    for uid, radius in (("obj_a", 2.0), ("obj_b", 1.6)):
        d = root / uid
        d.mkdir()
        for k, w2c in enumerate(ring_cameras(radius)):
            np.save(d / f"{k:03d}.npy", blender_from_w2c(w2c))
            blob_png(d / f"{k:03d}.png", K, w2c)
    (root / "obj_c").mkdir()
    np.save(root / "obj_c" / "000.npy", blender_from_w2c(ring_cameras()[0]))
    blob_png(root / "obj_c" / "000.png", K, ring_cameras()[0])
    return root


def _centroid(img):
    w = img[..., 0].astype(np.float64)
    v, u = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


def test_baseline_range_and_relative_pose(objaverse_root):
    reader = ObjaverseDataset(objaverse_root, "train", split_fractions=ALL_TRAIN)
    assert [s.scene_id for s in reader.scenes] == ["obj_a", "obj_b", "obj_c"]
    pairs = PairDataset(reader, size=32, seed=3, baseline_deg=(55, 65), pairs_per_scene=10)
    seen_ab = set()
    for idx in range(20):  # scenes obj_a and obj_b
        p = pairs[idx]
        assert isinstance(p, PairSample)
        a, b = int(p.meta["obs_view"]), int(p.meta["target_view"])
        seen_ab.add((a, b))
        assert min((a - b) % N_VIEWS, (b - a) % N_VIEWS) == 2  # 60 degrees apart on the ring
        assert p.meta["baseline_deg"] == pytest.approx(60.0, abs=1e-6)
        radius = 2.0 if p.meta["scene_id"] == "obj_a" else 1.6
        cams = ring_cameras(radius)
        expected = relative_pose(cams[a], cams[b])
        np.testing.assert_allclose(p.w2c_target_rel[:3, :3], expected[:3, :3], atol=1e-9)
        # scale "center": the observation is 1 from the scene centre (the origin) -> translation / radius
        assert p.meta["scale_mode"] == "center" and p.meta["scale"] == pytest.approx(1 / radius, rel=1e-6)
        np.testing.assert_allclose(p.w2c_target_rel[:3, 3], expected[:3, 3] / radius, atol=1e-9)
        np.testing.assert_allclose(p.w2c_target_rel[3], [0, 0, 0, 1])
        assert p.obs_image.shape == p.target_image.shape == (32, 32, 3)
    assert len(seen_ab) > 5  # pairs vary across items


def test_crop_keeps_point_on_content_in_relative_frame(objaverse_root):
    reader = ObjaverseDataset(objaverse_root, "train", split_fractions=ALL_TRAIN)
    pairs = PairDataset(reader, size=32, seed=0, pairs_per_scene=4)
    for idx in range(8):
        p = pairs[idx]
        cams = ring_cameras(2.0 if p.meta["scene_id"] == "obj_a" else 1.6)
        obs = cams[int(p.meta["obs_view"])]
        # the point in the observation's (scale-normalised) frame
        X = (obs[:3, :3] @ POINT + obs[:3, 3]) * p.meta["scale"]
        uv_o, _ = project_points(p.K_obs, np.eye(4), X[None])
        uv_t, _ = project_points(p.K_target, p.w2c_target_rel, X[None])
        np.testing.assert_allclose(_centroid(p.obs_image), uv_o[0], atol=0.15)
        np.testing.assert_allclose(_centroid(p.target_image), uv_t[0], atol=0.15)


def test_determinism_epochs_and_generic_reader(objaverse_root):
    reader = ObjaverseDataset(objaverse_root, "train", split_fractions=ALL_TRAIN)
    p1 = PairDataset(reader, size=24, seed=7, pairs_per_scene=3)
    p2 = PairDataset(ObjaverseDataset(objaverse_root, "train", split_fractions=ALL_TRAIN), size=24, seed=7,
                     pairs_per_scene=3)
    views = lambda ds: [(ds[i].meta["obs_view"], ds[i].meta["target_view"]) for i in range(6)]
    first = views(p1)
    assert first == views(p2)
    p2.set_epoch(1)
    assert views(p2) != first

    class PlainReader:  # any reader that returns MultiViewSample (like the synthetic one)
        def __len__(self):
            return len(reader)

        def __getitem__(self, i):
            return reader.load(i)

    generic = PairDataset(PlainReader(), size=24, seed=7, pairs_per_scene=3)
    for i in range(6):
        a, b = p1[i], generic[i]
        assert a.meta == b.meta
        np.testing.assert_array_equal(a.obs_image, b.obs_image)
        np.testing.assert_array_equal(a.target_image, b.target_image)
        np.testing.assert_allclose(a.K_obs, b.K_obs)
        np.testing.assert_allclose(a.w2c_target_rel, b.w2c_target_rel)


def test_skips_and_errors(objaverse_root):
    reader = ObjaverseDataset(objaverse_root, "train", split_fractions=ALL_TRAIN)
    pairs = PairDataset(reader, size=16, seed=0)
    p = pairs[2]  # obj_c has one view: skipped, the next scene (wrapping to obj_a) is used
    assert p.meta["scene_id"] == "obj_a"
    assert pairs.skipped == 1 and pairs.skip_reasons == {"fewer than 2 views": 1}
    narrow = PairDataset(reader, size=16, baseline_deg=(100, 110))  # ring steps are 30 deg: none fit
    with pytest.raises(RuntimeError, match="no usable pair"):
        narrow[0]
    assert narrow.skip_reasons["no view pair within the baseline range"] == 2
    with pytest.raises(ValueError, match="baseline_deg"):
        PairDataset(reader, baseline_deg=(30, 10))
    with pytest.raises(ValueError, match="scale"):
        PairDataset(reader, scale="metric")
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_baseline_scale_and_collate(objaverse_root):
    reader = ObjaverseDataset(objaverse_root, "train", split_fractions=ALL_TRAIN)
    pairs = PairDataset(reader, size=16, seed=1, scale="baseline")
    items = [pairs[0], pairs[1]]
    for p in items:
        assert p.meta["scale_mode"] == "baseline"
        assert np.linalg.norm(camera_center(p.w2c_target_rel)) == pytest.approx(1.0, abs=1e-9)
    raw = PairDataset(reader, size=16, seed=1, scale="none")[0]
    cams = ring_cameras(2.0)
    expected = relative_pose(cams[int(raw.meta["obs_view"])], cams[int(raw.meta["target_view"])])
    np.testing.assert_allclose(raw.w2c_target_rel, expected, atol=1e-9)
    batch = collate_pairs(items)
    assert isinstance(batch, PairBatch) and len(batch) == 2
    assert batch.obs_image.shape == batch.target_image.shape == (2, 3, 16, 16)
    assert batch.obs_image.dtype == torch.float32 and float(batch.obs_image.abs().max()) <= 1.0
    assert batch.K_obs.shape == (2, 3, 3) and batch.w2c_target_rel.shape == (2, 4, 4)
    np.testing.assert_allclose(batch.w2c_target_rel[1].numpy(), items[1].w2c_target_rel, atol=1e-6)
    loader = torch.utils.data.DataLoader(pairs, batch_size=2, collate_fn=collate_pairs)
    assert next(iter(loader)).obs_image.shape == (2, 3, 16, 16)
