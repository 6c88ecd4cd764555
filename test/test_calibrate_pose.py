"""training/calibrate_pose.py: fitting the factors of the heads' predicted covariances, the
figures it reports, and writing them where the engine reads them."""
import json
import math

import numpy as np
import pytest
from engine_fixtures import TINY_CAMERA, TINY_IMAGE, make_tiny_model

from gst_ros.engine.engine import EngineConfig, GSTEngine
from training.calibrate_pose import coverage, fit_scale, main, parse_scene_range, rank_correlation
from training.token_shards import ShardWriter, TokenShardDataset


def test_fit_scale_recovers_a_known_factor():
    """Errors drawn from N(0, 3 S_i) with per-pair covariances S_i: the fitted factor is ~3, and at
    it the coverage of the chi-square(3) ellipsoids is ~68% / ~95%."""
    rng = np.random.default_rng(0)
    n = 4000
    scales = rng.uniform(0.01, 0.2, (n, 3))
    cov = np.stack([np.diag(s) for s in scales])
    err = rng.standard_normal((n, 3)) * np.sqrt(3.0 * scales)
    a = fit_scale(err, cov, floor=1e-8)
    assert a == pytest.approx(3.0, rel=0.06)
    cov_a = coverage(err, a * cov)
    assert cov_a["68%"] == pytest.approx(0.68, abs=0.03) and cov_a["95%"] == pytest.approx(0.95, abs=0.02)
    assert coverage(err, cov)["68%"] < 0.4  # uncalibrated: too confident
    assert rank_correlation(np.arange(10.0), np.arange(10.0) ** 2) == pytest.approx(1.0)
    assert rank_correlation(np.arange(10.0), -np.arange(10.0)) == pytest.approx(-1.0)


def test_scene_ranges():
    assert parse_scene_range("100:", 1200) == range(100, 1200)
    assert parse_scene_range(":60", 1200) == range(0, 60)
    assert parse_scene_range(":", 5) == range(0, 5)
    with pytest.raises(ValueError, match="A:B"):
        parse_scene_range("100", 1200)
    with pytest.raises(ValueError, match="selects no scene"):
        parse_scene_range("10:5", 1200)


def test_calibrate_writes_what_the_engine_reads(tmp_path):
    """On a tiny model with pose and centre heads and token shards of its vocabulary, --write
    stores two positive factors (and what they were fitted on) in gst/config.json, the engine
    loads them, and the report holds the figures; a model without a centre head is refused."""
    model_dir = make_tiny_model(tmp_path, seed=3, name="centre", pose_head=True, center_head=True)
    rng = np.random.default_rng(0)
    grid, n = TINY_IMAGE.token_grid, TINY_IMAGE.token_grid ** 2
    with ShardWriter(tmp_path / "shards", (grid, grid), TINY_IMAGE.codebook_size, TINY_CAMERA.codebook_size,
                     pairs_per_shard=64) as w:
        for s in range(6):
            views = rng.integers(0, TINY_IMAGE.codebook_size, (3, n))
            pairs = np.array([[0, 1], [1, 2], [2, 0]])
            rel = np.tile(np.eye(4), (3, 1, 1))
            for i in range(3):
                angle = math.radians(rng.uniform(-60, 60))
                rel[i, :3, :3] = [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                                  [-math.sin(angle), 0, math.cos(angle)]]
                rel[i, :3, 3] = rng.normal(0, 0.5, 3)
            cams = rng.integers(0, TINY_CAMERA.codebook_size, (3, n))
            w.add_scene(f"s{s}", "toy", views, pairs, cams, rel, np.tile(np.eye(3), (3, 1, 1)))
    shards = TokenShardDataset(tmp_path / "shards")
    assert list(shards.pair_scenes()) == [shards[i]["scene"] for i in range(len(shards))]
    out = tmp_path / "calibration.json"
    with pytest.raises(SystemExit):  # token pairs cannot be mirrored: the default read-out needs images
        main(["--model", str(model_dir), "--shards", str(tmp_path / "shards"), "--device", "cpu"])
    assert main(["--model", str(model_dir), "--shards", str(tmp_path / "shards"), "--scenes", "2:",
                 "--no-mirror", "--write", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 12 and result["scenes"] == "2:6"
    assert (tmp_path / "calibration.png").stat().st_size > 1000
    fitted = result["fitted"]
    assert all(0 < fitted[k] < math.inf for k in ("rotation_var_scale", "center_var_scale"))
    assert result["with_fitted_calibration"]["rotation_nll"] <= result["uncalibrated"]["rotation_nll"] + 1e-9
    meta = json.loads((model_dir / "gst" / "config.json").read_text())
    assert meta["pose_calibration"]["pairs"] == 12 and meta["pose_calibration"]["pose_mirror"] is False
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    assert engine.pose_calibration == pytest.approx(fitted)
    plain = make_tiny_model(tmp_path, seed=3, name="plain", pose_head=True)
    with pytest.raises(ValueError, match="no centre head"):
        main(["--model", str(plain), "--shards", str(tmp_path / "shards"), "--device", "cpu",
              "--no-progress", "--no-mirror"])


def test_calibrate_from_images_through_the_engine(tmp_path, capsys):
    """--root reads every ordered pair of each scene's views through GSTEngine.estimate_pose (the
    mirrored read-out included); its errors are those of the engine's estimates against the true
    relative cameras, and --write stores factors fitted for that read-out."""
    pytest.importorskip("pybullet")
    from gst_ros.cli import main as gst_main
    from gst_ros.geometry import relative_rotation_errors
    from training.calibrate_pose import image_errors
    from training.datasets import build_dataset
    from training.evaluate import normalized_cameras, scenes_from_reader

    data = tmp_path / "data"
    assert gst_main(["render", "--out", str(data), "--scenes", "3", "--views", "3", "--size", "64",
                     "--objects", "mixed", "--test-object-fraction", "0", "--test-view-fraction", "0",
                     "--seed", "1", "--quiet"]) == 0
    model_dir = make_tiny_model(tmp_path, seed=4, name="centre", pose_head=True, center_head=True)
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    scenes = scenes_from_reader(build_dataset("synthetic", data, "train"), "train", 3, 2, first=1)
    assert len(scenes) == 2
    errs = image_errors(engine, scenes, progress=False)
    assert errs["angle_deg"].shape == (12,) and errs["rot_cov"].shape == (12, 3, 3)
    # the errors are the engine's own: pair (0, 1) of the first scene
    scene = scenes[0]
    est = engine.estimate_pose(scene.images[0], scene.images[1], scene.K[0], scene.K[1])
    gt = normalized_cameras(np.asarray(scene.w2c, dtype=np.float64))
    want = relative_rotation_errors(np.stack([np.eye(3), est.w2c[:3, :3]]), gt[:2, :3, :3])[0]
    assert errs["angle_deg"][0] == pytest.approx(want, abs=1e-3)
    assert engine.pose_calibration == {"rotation_var_scale": 1.0, "center_var_scale": 1.0}  # restored
    out = tmp_path / "images.json"
    assert main(["--model", str(model_dir), "--root", str(data), "--split", "train", "--scenes", "1:3",
                 "--write", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 12 and result["read_out"] == {"pose_symmetric": True, "pose_mirror": True}
    meta = json.loads((model_dir / "gst" / "config.json").read_text())["pose_calibration"]
    assert meta["split"] == "train" and meta["pose_mirror"] is True
    assert GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu")).pose_calibration == \
        pytest.approx(result["fitted"])
    capsys.readouterr()
    assert main(["--model", str(model_dir), "--root", str(tmp_path / "none"), "--split", "train"]) == 2
    assert capsys.readouterr().err.startswith("calibrate_pose: dataset 'synthetic': root directory")
