"""Dataset readers on tiny fixtures written here in each data set's true on-disk format, from
KNOWN cameras in the data set's own convention: a camera at (2, 0, 0) looking at the origin
with image up = world +z. In the internal convention (OpenCV axes, world-to-camera) that camera
is EXPECTED_W2C below (written by hand: right = +y, down = -z, forward = -x)."""
import gzip
import json
import logging

import cv2
import numpy as np
import pytest
from test_datasets_colmap import write_binary_model, write_text_model
from transforms3d.quaternions import mat2quat

from training.datasets import build_dataset, dataset_class, hash_split, parse_split_fractions
from training.datasets.co3d import CO3DDataset
from training.datasets.mvimgnet import MVImgNetDataset
from training.datasets.objaverse import ObjaverseDataset
from training.datasets.re10k import RealEstate10KDataset
from training.datasets.sample import MultiViewSample

EXPECTED_R = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
EXPECTED_W2C = np.eye(4)
EXPECTED_W2C[:3, :3] = EXPECTED_R
EXPECTED_W2C[:3, 3] = [0.0, 0.0, 2.0]
ALL_TRAIN = {"train": 1.0, "val": 0.0, "test": 0.0}


def write_png(path, h=48, w=64, seed=0, rgba=False):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 4 if rgba else 3), dtype=np.uint8)
    if rgba:
        img[..., 3] = 255
        img[0, 0, 3] = 0  # one transparent pixel: must come back white
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return img


# ------------------------------------------------------------------------------- Objaverse

def blender_rt_on_plus_x():
    """Blender camera axes (x right, y up, z backward) of the known camera, as a 3x4 world-to-camera."""
    R = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    return np.c_[R, -R @ [2.0, 0.0, 0.0]]


def test_objaverse_known_camera_and_corrupt_files(tmp_path, caplog):
    root = tmp_path / "objaverse"
    d = root / "uid_good"
    write_png(d / "000.png", 64, 64, rgba=True)
    np.save(d / "000.npy", blender_rt_on_plus_x())
    write_png(d / "001.png", 64, 64, seed=1, rgba=True)
    np.save(d / "001.npy", np.c_[np.eye(3), [0, 0, -1.5]])
    write_png(d / "002.png", 64, 64, seed=2)
    (d / "002.npy").write_bytes(b"\x93NUMPY truncated")  # corrupt pose
    write_png(d / "003.png", 64, 64, seed=3)
    np.save(d / "003.npy", np.full((3, 4), np.nan))  # NaN pose
    (d / "004.png").write_bytes(b"garbage")  # unreadable image
    np.save(d / "004.npy", np.c_[np.eye(3), [0, 0, -2.0]])
    write_png(d / "005.png", 64, 64, seed=5)  # no pose file
    ds = ObjaverseDataset(root, "train", split_fractions=ALL_TRAIN)
    assert len(ds) == 1
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        s = ds[0]
    assert isinstance(s, MultiViewSample)
    assert s.view_ids == ["000", "001"] and s.scene_id == "uid_good"
    np.testing.assert_allclose(s.w2c[0], EXPECTED_W2C, atol=1e-12)
    np.testing.assert_allclose(s.w2c[1][:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-12)
    f = 32 / np.tan(np.radians(49.13) / 2)
    np.testing.assert_allclose(s.K[0], [[f, 0, 31.5], [0, f, 31.5], [0, 0, 1]], atol=1e-9)
    np.testing.assert_array_equal(s.images[0, 0, 0], [255, 255, 255])  # transparent -> white
    assert ds.skip_reasons == {"bad pose file": 2, "missing pose file": 1, "unreadable image": 1}
    assert ds.skipped == 4
    assert "002.npy" in caplog.text and "004.png" in caplog.text


def test_objaverse_uid_lists(tmp_path):
    root = tmp_path / "obj"
    for uid in ("a", "b", "c"):
        write_png(root / uid / "000.png", 8, 8)
        np.save(root / uid / "000.npy", blender_rt_on_plus_x())
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a", "c", "missing"], "val": ["b"]}))
    ds = ObjaverseDataset(root, "train", uid_list=tmp_path / "splits.json")
    assert [s.scene_id for s in ds.scenes] == ["a", "c"] and ds.skip_reasons["missing object directory"] == 1
    val = ObjaverseDataset(root, "val", uid_list=tmp_path / "splits.json")
    assert [s.scene_id for s in val.scenes] == ["b"]
    (tmp_path / "uids.txt").write_text("a\nb\n")
    ds = ObjaverseDataset(root, "train", uid_list=tmp_path / "uids.txt", split_fractions=ALL_TRAIN)
    assert [s.scene_id for s in ds.scenes] == ["a", "b"]


def test_hash_split_deterministic_and_proportional():
    names = [f"obj{i}" for i in range(2000)]
    a = [hash_split(n) for n in names]
    assert a == [hash_split(n) for n in names]
    share = {k: a.count(k) / len(a) for k in ("train", "val", "test")}
    assert 0.87 < share["train"] < 0.93 and 0.03 < share["val"] < 0.07 and 0.03 < share["test"] < 0.07
    with pytest.raises(ValueError, match="sum to 1"):
        hash_split("x", {"train": 0.5})
    # the command lines' --split-fractions
    assert parse_split_fractions("train=0.8, val=0.1,test=0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    for bad, msg in [("train=0.8,val=0.1", "sum to 1"), ("train:1", "NAME=SHARE"), ("train=x", "NAME=SHARE"),
                     ("=1", "NAME=SHARE"), ("train=nan,val=1", "sum to 1")]:
        with pytest.raises(ValueError, match=msg):
            parse_split_fractions(bad)


# ----------------------------------------------------------------------------------- CO3D

def p3d_on_plus_x():
    """PyTorch3D camera axes (x left, y up, z forward) of the known camera; row-vector R, T
    (X_cam = X_world @ R + T): R's columns are the camera axes in world coordinates."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])  # left, up, forward
    R = axes.T
    T = -np.array([2.0, 0.0, 0.0]) @ R
    return R, T


def co3d_frame(seq, num, path, R, T, size=(48, 64), fmt="ndc_isotropic"):
    return {"sequence_name": seq, "frame_number": num, "frame_timestamp": 0.1 * num,
            "image": {"path": path, "size": list(size)},
            "viewpoint": {"R": np.asarray(R).tolist(), "T": np.asarray(T).tolist(),
                          "focal_length": [2.0, 2.0], "principal_point": [0.1, -0.2],
                          "intrinsics_format": fmt}}


def write_co3d(root):
    R, T = p3d_on_plus_x()
    frames = []
    for seq in ("seqA", "seqB"):
        for k in range(3):
            rel = f"chair/{seq}/images/frame{k:06d}.jpg"
            write_png((root / rel).with_suffix(".png"), seed=k)
            (root / rel.replace(".jpg", ".png")).rename(root / rel)  # CO3D frames are jpg; content is png
            frames.append(co3d_frame(seq, k, rel, R, T))
    frames[1]["viewpoint"]["R"][0][0] = float("nan")  # NaN pose
    frames[2]["image"]["size"] = [48, 60]  # wrong size (file is 48x64)
    frames[4]["image"]["path"] = "chair/seqB/images/missing.jpg"
    frames.append({"sequence_name": "seqA", "frame_number": 9})  # no image/viewpoint
    with gzip.open(root / "chair" / "frame_annotations.jgz", "wt") as f:
        json.dump(frames, f)
    train = [["seqA", k, f"chair/seqA/images/frame{k:06d}.jpg"] for k in range(3)] + [["seqA", 9, "x"]]
    sl = {"train": train,
          "val": [["seqB", k, f"chair/seqB/images/frame{k:06d}.jpg"] for k in range(3)], "test": []}
    (root / "chair" / "set_lists").mkdir()
    (root / "chair" / "set_lists" / "set_lists_fewview_dev.json").write_text(json.dumps(sl))
    (root / "table").mkdir()
    (root / "table" / "frame_annotations.jgz").write_bytes(gzip.compress(b'[{"sequence_name": "s", "fr')[:-6])


def test_co3d_known_camera_splits_and_corrupt(tmp_path):
    root = tmp_path / "co3d"
    write_co3d(root)
    ds = CO3DDataset(root, "train", seen_categories=["chair"])
    # truncated annotations of "table", NaN pose, frame without image/viewpoint
    assert ds.skip_reasons == {"unreadable annotations": 1, "bad frame annotation": 2}
    assert len(ds) == 1 and ds.scenes[0].scene_id == "chair/seqA"
    assert [v.view_id for v in ds.scene_views(0)] == ["0", "2"]
    s = ds[0]  # frame 2 has the wrong annotated size: skipped on load
    assert ds.skip_reasons["image size mismatch"] == 1
    assert s.view_ids == ["0"] and s.category == "chair" and ds.category_group("chair") == "seen"
    assert ds.category_group("teddybear") == "unseen"
    np.testing.assert_allclose(s.w2c[0], EXPECTED_W2C, atol=1e-12)
    # ndc_isotropic: s = min(H, W)/2 = 24; f = 2*24; pp = (W/2, H/2) - pp_ndc*24 - 0.5
    np.testing.assert_allclose(s.K[0], [[48.0, 0, 32 - 2.4 - 0.5], [0, 48.0, 24 + 4.8 - 0.5], [0, 0, 1]],
                               atol=1e-9)
    val = CO3DDataset(root, "val")
    assert [sc.scene_id for sc in val.scenes] == ["chair/seqB"]
    s = val[0]
    assert s.view_ids == ["0", "2"] and val.skip_reasons["missing image"] == 1


# -------------------------------------------------------------------------- RealEstate10K

def test_re10k_known_camera_and_missing_frames(tmp_path):
    root = tmp_path / "re10k"
    w2c2 = np.eye(4)
    w2c2[:3, 3] = [0.1, 0.0, 0.0]
    rows = []
    for ts, w2c in ((1000, EXPECTED_W2C), (2000, w2c2), (3000, w2c2)):
        rows.append(" ".join(map(str, [ts, 0.9, 1.2, 0.5, 0.45, 0, 0, *w2c[:3].reshape(-1)])))
    rows.append("4000 0.9 1.2 0.5 0.5 0 0 1 0 0")  # truncated line
    (root / "test").mkdir(parents=True)
    (root / "test" / "clip1.txt").write_text("https://www.youtube.com/watch?v=xyz\n" + "\n".join(rows) + "\n")
    write_png(root / "frames" / "test" / "clip1" / "1000.png")
    cv2.imwrite(str(root / "frames" / "test" / "clip1" / "2000.jpg"), np.zeros((48, 64, 3), np.uint8))
    ds = RealEstate10KDataset(root, "test")
    assert len(ds) == 1
    s = ds[0]
    assert s.view_ids == ["1000", "2000"] and s.scene_id == "clip1"
    assert ds.skip_reasons == {"missing frame": 1, "bad camera line": 1}
    np.testing.assert_allclose(s.w2c[0], EXPECTED_W2C, atol=1e-12)
    np.testing.assert_allclose(s.w2c[1], w2c2, atol=1e-12)
    # normalised by the 64x48 frame; origin at the image corner -> -0.5 px
    np.testing.assert_allclose(s.K[0], [[0.9 * 64, 0, 31.5], [0, 1.2 * 48, 0.45 * 48 - 0.5], [0, 0, 1]],
                               atol=1e-9)
    cropped = RealEstate10KDataset(root, "test", image_size=32)[0]
    assert cropped.images.shape == (2, 32, 32, 3)
    # K of the 48x48 centre crop resized to 32: f * 32/48, cx = (31.5 - 8 + 0.5) * 2/3 - 0.5
    np.testing.assert_allclose(cropped.K[0, 0], [0.9 * 64 * 2 / 3, 0, 15.5], atol=1e-9)


# ------------------------------------------------------------------------------- MVImgNet

def write_mvimgnet_instance(inst_dir, binary: bool, image_scale=1):
    R, t = EXPECTED_W2C[:3, :3], EXPECTED_W2C[:3, 3]
    R2 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    cams = {1: ("SIMPLE_RADIAL", 64 * image_scale, 48 * image_scale, [50.0 * image_scale, 32.0 * image_scale,
                                                                      24.0 * image_scale, 0.01])}
    images = {3: (mat2quat(R), t, 1, "000.jpg", [(1.0, 2.0, -1)]),
              4: (mat2quat(R2), -R2 @ [0, -3.0, 1.0], 1, "001.jpg", []),
              6: (mat2quat(R2), [0, 0, 1.0], 1, "002.jpg", [])}  # its image file is missing
    (write_binary_model if binary else write_text_model)(inst_dir / "sparse" / "0", cams, images, {})
    write_png(inst_dir / "images" / "000.jpg", seed=1)
    write_png(inst_dir / "images" / "001.jpg", seed=2)


@pytest.mark.parametrize("image_scale", [1, 2])
def test_mvimgnet_binary_and_text_give_same_sample(tmp_path, image_scale):
    root = tmp_path / "mvimgnet"
    write_mvimgnet_instance(root / "7" / "inst_bin", binary=True, image_scale=image_scale)
    write_mvimgnet_instance(root / "7" / "inst_txt", binary=False, image_scale=image_scale)
    (root / "7" / "inst_empty").mkdir()
    (root / "7" / "inst_bad" / "sparse" / "0").mkdir(parents=True)
    (root / "7" / "inst_bad" / "sparse" / "0" / "cameras.bin").write_bytes(b"\x01\x00")
    (root / "7" / "inst_bad" / "sparse" / "0" / "images.bin").write_bytes(b"")
    ds = MVImgNetDataset(root, "train", split_fractions=ALL_TRAIN)
    assert ds.skip_reasons["missing COLMAP model"] == 1
    ids = [s.scene_id for s in ds.scenes]
    assert ids == ["7/inst_bad", "7/inst_bin", "7/inst_txt"]
    assert ds.scene_views(0) == [] and ds.skip_reasons["corrupt scene"] == 1
    a, b = ds.load(1), ds.load(2)
    assert a.view_ids == b.view_ids == ["000.jpg", "001.jpg"] and a.category == "7"
    assert ds.skip_reasons["missing image"] == 2
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.K, b.K)
    np.testing.assert_array_equal(a.w2c, b.w2c)
    np.testing.assert_allclose(a.w2c[0], EXPECTED_W2C, atol=1e-12)
    # COLMAP camera f=50, pp=(32, 24) for 64x48 (corner origin); frames stored at 64x48
    np.testing.assert_allclose(a.K[0], [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], atol=1e-9)
    s = ds[0]  # the corrupt first scene is skipped; the next one is returned
    assert s.scene_id == "7/inst_bin"


def test_registry(tmp_path):
    (tmp_path / "x").mkdir()
    write_mvimgnet_instance(tmp_path / "c" / "i", binary=True)
    ds = build_dataset("mvimgnet", tmp_path, "train", split_fractions=ALL_TRAIN, categories=["c"])
    assert isinstance(ds, MVImgNetDataset) and len(ds) == 1
    assert dataset_class("co3d") is CO3DDataset and dataset_class("re10k") is RealEstate10KDataset
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        build_dataset("kitti", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("objaverse", tmp_path / "nope")
    # a reader option the reader does not take is named (not a TypeError from its constructor)
    with pytest.raises(ValueError, match=r"'re10k': its reader takes no option \['split_fractions'\]"):
        build_dataset("re10k", tmp_path, "train", split_fractions=ALL_TRAIN)
    try:  # the synthetic reader belongs to the sim engineer; when present it is registered lazily
        cls = dataset_class("synthetic")
    except ValueError as e:
        assert "synthetic.py" in str(e)
    else:
        assert cls.__name__ == "SyntheticDataset"
