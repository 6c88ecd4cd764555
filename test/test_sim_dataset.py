"""`gst render` data sets: same seed -> same bytes, disjoint splits, exact cameras on disk, and a
reader that yields MultiViewSample and skips (and counts) corrupt or missing files."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pybullet")

from gst_ros.cli import main as gst_main  # noqa: E402
from gst_ros.sim.dataset import RenderConfig, write_dataset  # noqa: E402
from training.datasets.sample import MultiViewSample  # noqa: E402
from training.datasets.synthetic import SyntheticDataset  # noqa: E402

ARGS = ["--scenes", "4", "--views", "5", "--size", "64", "--objects", "mixed",
        "--objects-per-scene", "1", "2", "--test-object-fraction", "0.25",
        "--test-view-fraction", "0.4", "--depth", "--masks", "--quiet"]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "render_log.csv"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    a, b = base / "a", base / "b"
    assert gst_main(["render", "--out", str(a), "--seed", "7", "--workers", "2", *ARGS]) == 0
    assert gst_main(["render", "--out", str(b), "--seed", "7", "--workers", "1", *ARGS]) == 0
    return a, b


def test_same_seed_same_bytes(rendered, tmp_path):
    a, b = rendered
    fa, fb = _files(a), _files(b)
    assert len([k for k in fa if k.endswith(".png") and "/rgb/" in k]) == 4 * 5
    assert fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    c = tmp_path / "c"
    assert gst_main(["render", "--out", str(c), "--seed", "8", "--workers", "1", *ARGS]) == 0
    fc = _files(c)
    assert fc["scenes/000000/rgb/000.png"] != fa["scenes/000000/rgb/000.png"]


def test_splits_are_disjoint(rendered):
    root = rendered[0]
    m = json.loads((root / "manifest.json").read_text())
    assert set(m["splits"]) == {"train", "test_views", "test_objects"}
    assert set(m["objects"]["train"]).isdisjoint(m["objects"]["test"])
    scenes = {s["scene"]: s["objects"] for s in m["scenes"]}
    train_scenes = {e["scene"] for e in m["splits"]["train"]}
    test_obj_scenes = {e["scene"] for e in m["splits"]["test_objects"]}
    assert len(test_obj_scenes) == 1 and len(train_scenes) == 3
    assert train_scenes.isdisjoint(test_obj_scenes)
    seen = {o for s in train_scenes for o in scenes[s]}
    unseen = {o for s in test_obj_scenes for o in scenes[s]}
    assert seen.isdisjoint(unseen), "an unseen-object scene shares an object with training"
    assert unseen <= set(m["objects"]["test"]) and seen <= set(m["objects"]["train"])
    held = {e["scene"]: set(e["views"]) for e in m["splits"]["test_views"]}
    for e in m["splits"]["train"]:
        assert held[e["scene"]] and held[e["scene"]].isdisjoint(e["views"])
        assert len(held[e["scene"]]) + len(e["views"]) == 5


def test_reader_yields_saved_cameras(rendered):
    root = rendered[0]
    ds = SyntheticDataset(root, split="train")
    assert len(ds) == 3 and ds.skipped == 0
    s = ds[0]
    assert isinstance(s, MultiViewSample)
    assert s.images.shape == (3, 64, 64, 3) and s.images.dtype == np.uint8
    cams = json.loads((root / "scenes" / s.scene_id / "cameras.json").read_text())
    by_id = {v["id"]: v for v in cams["views"]}
    for k, vid in enumerate(s.view_ids):
        assert np.array_equal(s.K[k], np.array(by_id[vid]["K"]))
        assert np.array_equal(s.w2c[k], np.array(by_id[vid]["w2c"]))
    sub = ds.get(0, view_ids=[s.view_ids[-1]])
    assert sub.view_ids == [s.view_ids[-1]] and np.array_equal(sub.images[0], s.images[-1])
    assert len(SyntheticDataset(root, split="test_objects")[0]) == 5
    assert len(SyntheticDataset(root, split="train", num_views=2)[0]) == 2
    with pytest.raises(KeyError, match="no split 'val'"):
        SyntheticDataset(root, split="val")


def test_eval_gallery_holds_the_whole_orbit(rendered):
    """A test_views scene evaluates its held-out views; its side-retrieval gallery adds the
    scene's training views, each with its own saved camera, after the evaluated ones."""
    from training import evaluate

    root = rendered[0]
    ds = SyntheticDataset(root, split="test_views")
    assert ds.scene_view_ids(0) == [f"{v:03d}" for v in range(5)]
    scene = evaluate.scenes_from_reader(ds, "seen", 2, max_scenes=1)[0]
    held = ds[0].view_ids[:2]
    others = [v for v in ds.scene_view_ids(0) if v not in held]
    assert len(scene.other_images) == len(others) == 3
    cams = {v["id"]: np.asarray(v["w2c"]) for v in
            json.loads((root / "scenes" / scene.scene_id / "cameras.json").read_text())["views"]}
    gallery, w2c = evaluate.retrieval_gallery(scene, 32)
    assert gallery.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(w2c, np.stack([cams[v] for v in held + others]))


def test_depth_and_mask_agree(rendered):
    import cv2

    root = rendered[0]
    d = root / "scenes" / "000000"
    depth = cv2.imread(str(d / "depth" / "000.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(d / "mask" / "000.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and mask.dtype == np.uint8
    assert (mask > 0).any()
    assert (depth[mask > 0] > 0).all(), "every object pixel has a depth"


def test_reader_skips_corrupt_and_missing(rendered, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(rendered[0], root)
    m = json.loads((root / "manifest.json").read_text())
    first, second = m["splits"]["train"][0], m["splits"]["train"][1]
    (root / "scenes" / first["scene"] / "rgb" / f"{first['views'][0]}.png").write_bytes(b"not a png")
    (root / "scenes" / first["scene"] / "rgb" / f"{first['views'][1]}.png").unlink()
    (root / "scenes" / second["scene"] / "cameras.json").write_text("{truncated")
    ds = SyntheticDataset(root, split="train")
    assert len(ds) == 2 and ds.skipped == 1
    s = ds[0]
    assert s.scene_id == first["scene"] and len(s) == len(first["views"]) - 2
    assert ds.skipped == 3
    ds[0]
    assert ds.skipped == 3, "each bad file is counted once"


def test_render_rejects_bad_arguments(tmp_path, capsys):
    assert gst_main(["render", "--out", str(tmp_path / "x"), "--size", "32", "--quiet"]) == 2
    assert "--size must be in [64, 512]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--views must be >= 1"):
        write_dataset(tmp_path / "y", RenderConfig(views=0))


def test_object_pool_holds_only_renderable_meshes():
    """Every random_urdf the pool offers has finite mesh vertices (random_urdfs/168 has only NaN
    ones, which once stopped an 800-scene render with 'empty bounding box')."""
    import pybullet_data

    from gst_ros.sim.scene import BROKEN_RANDOM_URDFS, object_pool, object_urdf

    pool = object_pool("random")
    assert "random_168" not in pool and len(pool) == 1000 - len(BROKEN_RANDOM_URDFS)
    root = pybullet_data.getDataPath()
    for name in pool:
        obj = (Path(root) / object_urdf(name)).with_suffix(".obj")
        verts = [line.split()[1:4] for line in obj.read_text().splitlines() if line.startswith("v ")]
        assert verts and np.all(np.isfinite(np.asarray(verts, dtype=float))), name


@pytest.mark.parametrize("seed,fraction", [(11, 0.25), (0, 0.1), (3, 0.5)])
def test_mixed_pool_keeps_the_catalogue_split_of_textured(seed, fraction):
    """A model trained on a `mixed` render is evaluated on a `textured` render's held-out
    objects (the shipped model's stage 10): the catalogue part of the mixed split must be the
    textured split, and the random shapes split by the same fraction."""
    from gst_ros.sim.scene import object_pool, split_objects

    train_t, test_t = split_objects(object_pool("textured"), fraction, seed)
    train_m, test_m = split_objects(object_pool("mixed"), fraction, seed)
    catalogue = set(object_pool("textured"))
    assert [o for o in test_m if o in catalogue] == test_t
    assert [o for o in train_m if o in catalogue] == train_t
    n_random = len(object_pool("random"))
    assert sum(o not in catalogue for o in test_m) == max(1, round(n_random * fraction))
    assert not set(train_m) & set(test_m) and len(train_m) + len(test_m) == len(object_pool("mixed"))


def test_importing_the_renderer_prints_no_pybullet_banner():
    """pybullet writes its build time to stderr when imported; the renderer imports it with stderr
    silenced, so `gst render --quiet`, its workers and the simulated camera print nothing of it.
    A fresh interpreter: pybullet must not be imported yet."""
    import subprocess
    import sys

    code = "import gst_ros.sim.renderer as r; print(r.p.isNumpyEnabled())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "build time" not in r.stderr + r.stdout and r.stdout.strip() in ("0", "1")
