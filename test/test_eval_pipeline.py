"""End to end on CPU: render -> tokenizers -> pre-tokenise -> transformer -> evaluate (the quick
pipeline), then the joint-vs-alternating ablation on its tokens."""
import csv
import math

import numpy as np
import pytest

from training import ablation, evaluate, pipeline
from training.evaluate import write_report
from training.token_shards import TokenShardDataset
from training.train_gst import TrainConfig


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    return out, pipeline.run_pipeline(out, pipeline.QUICK, seed=0, progress=False)


@pytest.mark.slow
def test_quick_pipeline_end_to_end(quick):
    out, res = quick
    from gst_ros.engine.engine import EngineConfig, GSTEngine

    engine = GSTEngine(EngineConfig(model_dir=res["paths"]["model_dir"], device="cpu"))
    assert engine.grid == 4 and engine.image_size == 32
    tokens = TokenShardDataset(out / "tokens" / "train")
    assert len(tokens) > 50 and tokens.manifest["skipped"] == {}
    rows = {(r["method"], r["group"]): r for r in res["table"]}
    for group in ("seen", "unseen"):
        for method in ("gst", "gst-prior", "opencv", "identity", "chance"):
            assert (method, group) in rows
        gst = rows[("gst", group)]
        assert gst["pairs"] == 6 and 0.0 <= gst["RRA@15"] <= gst["RRA@30"] <= 1.0
        assert math.isfinite(gst["PSNR"]) and -1 <= gst["SSIM"] <= 1
        mean4 = rows[("gst, mean of 4", group)]  # the expected view: an NVS-only row
        assert math.isfinite(mean4["PSNR"]) and mean4["pairs"] == 0
        assert math.isfinite(rows[("gst, most consistent of 4", group)]["PSNR"])
        # the engine's default expected view: the 4 of 16 samples closest to the requested camera
        assert math.isfinite(rows[("gst, mean of the 4 most consistent of 16", group)]["PSNR"])
        # side retrieval over each scene's whole orbit (6 views: the 2 evaluated and 4 more):
        # copying the observation always retrieves the observation; chance is 1 in 6. (This
        # minute-old tokenizer is too rough for its round trip to find its own view reliably:
        # the shipped one always does, model card.)
        assert rows[("copy observation", group)]["side@1"] == 0.0
        assert rows[("chance", group)]["side@1"] == pytest.approx(1 / 6)
        assert math.isfinite(rows[(evaluate.TOKENIZER_BOUND, group)]["PSNR"])
        assert math.isfinite(rows[(evaluate.OWN_CAMERA, group)]["PSNR"])   # the copy check
        assert 0.0 <= mean4["side@1"] <= 1.0 and 0.0 <= mean4["side err"] <= 180.0
        # identity's error is each pair's angular baseline: it scores only pairs closer than 15 degrees
        ident = [r for r in csv.DictReader(open(out / "eval" / "per_pair.csv")) if r["method"] == "identity"]
        for r in ident:
            assert float(r["rot_err_deg"]) == pytest.approx(float(r["baseline_deg"]), abs=1e-4)
    md = (out / "eval" / "results.md").read_text()
    assert "| gst | seen |" in md and "| chance | unseen |" in md
    grid = (out / "eval" / "grids" / "nvs_observation_truth_prediction.png")
    import cv2

    # observation | truth | 1 sample | mean of 4 | most consistent of 4 | mean of the 4 most
    # consistent of 16 | most consistent of 16
    assert cv2.imread(str(grid)).shape[1] == 7 * 32 + 8 * 2
    nearest = cv2.imread(str(grid.with_name("nvs_observation_truth_nearest_view.png")))
    assert nearest.shape == cv2.imread(str(grid)).shape
    assert (out / "gst" / "train_log.csv").is_file() and (out / "data" / "preview.png").is_file()
    # a re-run skips every finished stage and reproduces the table
    again = pipeline.run_pipeline(out, pipeline.QUICK, seed=0, progress=False)
    assert again["seconds"]["train_gst"] < res["seconds"]["train_gst"] + 5
    assert [r.get("RRA@30") for r in again["table"]] == [r.get("RRA@30") for r in res["table"]]


@pytest.mark.slow
def test_ablation_joint_vs_alternating(quick, tmp_path):
    out, _ = quick
    cfg = TrainConfig(model="tiny", model_overrides={"dim": 64, "n_layer": 1, "n_head": 1}, batch_size=8,
                      max_steps=6, log_every=1, val_every=3, val_batches=1, lr=1e-3,
                      shards=str(out / "tokens" / "train"), val_shards=str(out / "tokens" / "test_views"))
    rows = ablation.run_ablation(cfg, tmp_path, progress=False)
    assert [r["objective"] for r in rows] == ["joint", "alternating"]
    for r in rows:
        assert r["steps"] == 6 and np.isfinite(r["val_nll_image"]) and np.isfinite(r["val_nll_camera"])
    assert (tmp_path / "curves.png").stat().st_size > 10000
    table = (tmp_path / "ablation.md").read_text()
    assert "| joint | 6 |" in table and "| alternating | 6 |" in table
    curves = {o: ablation.read_curve(tmp_path / o / "train_log.csv") for o in ("joint", "alternating")}
    assert len(curves["joint"]["loss"]) == 6 and len(curves["joint"]["val_nll_image"]) == 2
    # same seed and data: at step 1 (zero-initialised output head, so uniform predictions) both
    # losses equal log(vocabulary size) whatever the mask
    vocab = 256 + 128 + 2
    for o in ("joint", "alternating"):
        assert curves[o]["loss"][0][1] == pytest.approx(math.log(vocab), rel=1e-4)


def test_write_report_handles_baselines_only(tmp_path):
    rows = [{"method": "identity", "group": "seen", "category": "c", "scene": "s", "i": 0, "j": 1,
             "baseline_deg": 10.0, "rot_err_deg": 10.0}]
    res = {"pairs": rows, "scenes": [{"method": "identity", "group": "seen", "category": "c", "scene": "s",
                                      "cc_acc@0.1": float("nan"), "failed": 0, "estimates": 1}],
           "nvs": [], "grids": []}
    table = write_report(res, tmp_path)
    assert table[0]["RRA@15"] == 1.0 and table[0]["failed"] == 0.0
    assert "| identity | seen | 1 | 1.000 |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_evaluate_cli_passes_the_guidance_scale(quick, tmp_path, capsys):
    """`--cfg-scale` reaches the engine: guided views differ from unguided ones drawn with the same
    seed, and a scale the engine refuses is a one-line error that names the setting (exit 2), as
    are a missing model, a missing data root, an unknown split and too many --views."""
    out, res = quick
    from training import evaluate

    def run(scale, *extra, model=res["paths"]["model_dir"], root=out / "data", split="test_views:seen"):
        return evaluate.main(["--model", model, "--root", str(root), "--split", split, "--views", "2",
                              "--scenes", "2", "--methods", "identity", "--no-opencv", "--view-samples", "1",
                              "--cfg-scale", str(scale), "--out", str(tmp_path / f"cfg{scale}"),
                              "--no-progress", *extra])

    def views(scale):
        assert run(scale) == 0
        return [float(r["psnr"]) for r in csv.DictReader(open(tmp_path / f"cfg{scale}" / "nvs.csv"))
                if r["method"] == "gst"]

    plain, guided = views(1.0), views(3.0)
    assert len(plain) == len(guided) == 2 and plain != guided
    assert views(1.0) == plain  # same seed, same scale: the same views
    capsys.readouterr()
    for kw, extra, message in [({}, ["--cfg-scale", "0"], "cfg_scale must be > 0"),
                               ({"model": str(tmp_path / "none")}, [], "does not exist"),
                               ({"root": tmp_path / "none"}, [], "root directory"),
                               ({"split": "bogus"}, [], "no split 'bogus'; the manifest has"),
                               ({}, ["--views", "99"], "has 99 views (--views)")]:
        assert run(1.0, *extra, **kw) == 2
        err = capsys.readouterr().err
        assert err.startswith("evaluate: ") and message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):   # own data: the synthetic renders' default splits do not apply
        evaluate.main(["--data", "mvimgnet", "--root", str(out / "data"), "--out", str(tmp_path / "m")])
    assert "--data mvimgnet needs --split" in capsys.readouterr().err
