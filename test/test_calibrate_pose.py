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
    assert main(["--model", str(model_dir), "--shards", str(tmp_path / "shards"), "--scenes", "2:",
                 "--write", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 12 and result["scenes"] == "2:6"
    assert (tmp_path / "calibration.png").stat().st_size > 1000
    fitted = result["fitted"]
    assert all(0 < fitted[k] < math.inf for k in ("rotation_var_scale", "center_var_scale"))
    assert result["with_fitted_calibration"]["rotation_nll"] <= result["uncalibrated"]["rotation_nll"] + 1e-9
    meta = json.loads((model_dir / "gst" / "config.json").read_text())
    assert meta["pose_calibration"]["pairs"] == 12
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    assert engine.pose_calibration == pytest.approx(fitted)
    plain = make_tiny_model(tmp_path, seed=3, name="plain", pose_head=True)
    with pytest.raises(ValueError, match="no centre head"):
        main(["--model", str(plain), "--shards", str(tmp_path / "shards"), "--device", "cpu",
              "--no-progress"])
