"""`gst pose`, `gst view`, `gst propose` end to end on the tiny model, and their pose conventions."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from engine_fixtures import make_tiny_model

from gst_ros.cli import main
from gst_ros.cli.propose import montage
from gst_ros.cli.view import orbit_w2c, pose_w2c
from gst_ros.geometry import camera_center, invert_pose, matrix_to_quat_xyzw


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_model(root)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        img = cv2.GaussianBlur(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (7, 7), 2)
        p = root / f"img{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(str(p))
    return {"model": str(model), "obs": paths[0], "tgt": paths[1], "root": root}


def test_orbit_conventions():
    np.testing.assert_allclose(orbit_w2c(0, 0), np.eye(4), atol=1e-12)
    pivot = np.array([0.0, 0.0, 1.0])
    T = orbit_w2c(90, 0)  # a quarter turn to the right: camera at (1, 0, 1) looking along -x
    np.testing.assert_allclose(camera_center(T), [1.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(invert_pose(T)[:3, 2], [-1.0, 0.0, 0.0], atol=1e-12)
    up = orbit_w2c(0, 30)  # elevation moves the camera up (-y) and keeps it looking at the pivot
    c = camera_center(up)
    assert c[1] == pytest.approx(-0.5) and np.linalg.norm(c - pivot) == pytest.approx(1.0)
    z = invert_pose(up)[:3, 2]
    np.testing.assert_allclose(z, (pivot - c) / np.linalg.norm(pivot - c), atol=1e-12)
    with pytest.raises(ValueError, match="elevation"):
        orbit_w2c(0, 90)


def test_pose_argument_is_camera_pose_in_observation_frame():
    # camera 0.3 to the right of the observation camera, yawed 10 deg (about its y axis)
    a = math.radians(10)
    R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    q = matrix_to_quat_xyzw(R)
    T = pose_w2c([0.3, 0.0, 0.0, *q])
    np.testing.assert_allclose(camera_center(T), [0.3, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(invert_pose(T)[:3, :3], R, atol=1e-12)
    np.testing.assert_allclose(pose_w2c([0, 0, 0, 0, 0, 0, 1]), np.eye(4), atol=1e-12)


def test_gst_pose_text_and_json(files, capsys):
    argv = ["pose", files["obs"], files["tgt"], "--model", files["model"], "--samples", "3",
            "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "quaternion (xyzw)" in text and "confidence" in text
    assert main(argv + ["--json", "--K", "60,60,39.5,29.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["samples"]) == 3 and np.asarray(out["covariance"]).shape == (6, 6)
    assert out["uncertainty_from"] == "samples" and "over 3 samples" in text
    c2o, w2c = np.asarray(out["camera_to_observation"]), np.asarray(out["w2c"])
    np.testing.assert_allclose(c2o @ w2c, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(c2o[:3, 3], out["position"], atol=1e-12)
    # the printed position + quaternion, fed back to `gst view --pose`, is the same camera
    np.testing.assert_allclose(pose_w2c(out["position"] + out["quaternion_xyzw"]), w2c, atol=1e-9)
    assert 0.0 <= out["confidence"] <= 1.0
    # --pose-estimate mode: the same samples (same seed), the estimate is one of them
    assert main(argv + ["--json", "--K", "60,60,39.5,29.5", "--pose-estimate", "mode"]) == 0
    mode = json.loads(capsys.readouterr().out)
    sample_w2c = [pose_w2c(s["position"] + s["quaternion_xyzw"]) for s in mode["samples"]]
    assert min(np.abs(np.asarray(mode["w2c"]) - w).max() for w in sample_w2c) < 1e-6


def test_gst_view_pose_and_orbit(files, capsys):
    out = files["root"] / "view.png"
    argv = ["view", files["obs"], "--model", files["model"], "--out", str(out), "--device", "cpu"]
    assert main(argv + ["--pose", "0.1,0,0,0,0,0,1", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    img = cv2.imread(str(out))
    assert img.shape == (32, 32, 3)
    np.testing.assert_allclose(rec["position"], [0.1, 0, 0], atol=1e-12)
    # default: the mean of the 4 most consistent of 16 samples, with their per-pixel spread beside it
    assert (rec["samples"], rec["kept"]) == (16, 4)
    assert rec["spread_file"] == str(files["root"] / "view_spread.png")
    spread = cv2.imread(rec["spread_file"])
    assert spread.shape == (32, 32, 3) and (spread[..., 0] == spread[..., 2]).all() and spread.max() > 0
    # and the sample closest to the requested camera: one draw, not the mean
    sample = cv2.imread(rec["sample_file"])
    assert rec["sample_file"] == str(files["root"] / "view_sample.png") and sample.shape == (32, 32, 3)
    assert not np.array_equal(sample, img)
    assert main(argv + ["--pose", "0.1,0,0,0,0,0,1", "--json", "--samples", "1"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["samples"] == 1 and "spread_file" not in rec and "sample_file" not in rec
    assert main(argv + ["--orbit", "20,10", "--samples", "6", "--keep", "0"]) == 0
    assert "mean of all 6 samples" in capsys.readouterr().out
    assert main(argv + ["--orbit", "20,10", "--samples", "6", "--keep", "2"]) == 0
    assert "mean of the 2 of 6 samples closest to the camera" in capsys.readouterr().out
    assert main(argv + ["--orbit", "20,10", "--keep", "-1"]) == 2
    assert "keep must be an integer >= 0" in capsys.readouterr().err
    assert main(argv + ["--orbit=-30,5"]) == 0  # a leading minus needs the `=` form
    np.testing.assert_allclose(camera_center(orbit_w2c(20, 10)) - [0, 0, 1], [
        math.sin(math.radians(20)) * math.cos(math.radians(10)), -math.sin(math.radians(10)),
        -math.cos(math.radians(20)) * math.cos(math.radians(10))], atol=1e-12)


def test_gst_propose_writes_pngs_montage_and_poses(files, capsys):
    out = files["root"] / "proposals"
    argv = ["propose", files["obs"], "-n", "3", "--out", str(out), "--model", files["model"],
            "--device", "cpu"]
    assert main(argv) == 0
    poses = json.loads((out / "poses.json").read_text())
    assert len(poses["proposals"]) == 3
    for p in poses["proposals"]:
        img = cv2.imread(str(out / p["file"]))
        assert img.shape == (32, 32, 3)
        np.testing.assert_allclose(np.asarray(p["camera_to_observation"]) @ np.asarray(p["w2c"]), np.eye(4),
                                   atol=1e-9)
    m = cv2.imread(str(out / "montage.png"))
    assert m.shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # 4 tiles (observation + 3) in a 2x2 grid
    assert "poses.json" in capsys.readouterr().out


def test_montage_layout():
    tiles = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    m = montage(tiles, columns=3, pad=1)
    assert m.shape == (6, 19, 3)
    assert (m[1:5, 1:6] == 0).all() and (m[1:5, 7:12] == 1).all() and (m[1:5, 13:18] == 2).all()
    assert (m[0] == 255).all()


def test_errors_exit_cleanly(files, tmp_path, capsys):
    assert main(["pose", files["obs"], files["tgt"], "--model", str(tmp_path / "none")]) == 2
    assert "train" in capsys.readouterr().err
    assert main(["pose", files["obs"], str(tmp_path / "missing.png"), "--model", files["model"]]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["pose", files["obs"], files["tgt"], "--model", files["model"], "--samples", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["pose", files["obs"], files["tgt"], "--K", "1,2,3"])
    assert "fx,fy,cx,cy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["view", files["obs"], "--out", "x.png"])  # neither --pose nor --orbit


@pytest.mark.parametrize("out, message", [
    ("noext", "no image format for the extension '(none)'"),
    ("view.xyz", "no image format for the extension '.xyz'"),
    (".", "is a directory: give an image file name"),
])
def test_view_refuses_an_output_it_cannot_write_before_sampling(files, tmp_path, capsys, out, message):
    """A --out that no image can be written to is refused by name before the model is loaded (the
    model here does not exist, so reaching it would give another error)."""
    out = str(tmp_path / out)
    none = str(tmp_path / "none")
    assert main(["view", files["obs"], "--orbit", "20,0", "--out", out, "--model", none]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gst view: --out") and message in err and "Traceback" not in err


def test_cli_input_errors_name_the_problem(files, tmp_path, capsys):
    """Inputs a user gets wrong end in one line naming the problem and exit status 2: a tokenizer
    backend that was never exported, a principal point outside the image, an existing file given
    as the proposals' folder, a reconstruction written to a name without an image extension."""
    assert main(["pose", files["obs"], files["tgt"], "--model", files["model"], "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "encoder.onnx is missing" in err and "gst export-onnx" in err
    # the images are 80x60: a principal point at x = 1e9 belongs to no image of that size
    assert main(["pose", files["obs"], files["tgt"], "--model", files["model"], "--K=70,70,1e9,30"]) == 2
    assert "principal point (1e+09, 30) lies far outside the 80x60 image" in capsys.readouterr().err
    # off the image but within its size of it, as an ROI crop away from the optical centre gives: used
    assert main(["pose", files["obs"], files["tgt"], "--model", files["model"], "--K=70,70,-75,110"]) == 0
    capsys.readouterr()
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"x")
    assert main(["propose", files["obs"], "-n", "1", "--out", str(taken), "--model", files["model"]]) == 2
    assert "is a file: give a folder" in capsys.readouterr().err
    tok = str(Path(files["model"]) / "image_tokenizer")
    assert main(["reconstruct", files["obs"], "--tokenizer", tok, "--out", str(tmp_path / "r")]) == 2
    assert "no image format" in capsys.readouterr().err
    out = str(tmp_path / "r.png")
    assert main(["reconstruct", files["obs"], "--tokenizer", str(tmp_path), "--out", out]) == 2  # not one
    assert capsys.readouterr().err.startswith("gst reconstruct: ")


def test_gst_reconstruct_writes_input_and_reconstruction(files, tmp_path, capsys):
    """`gst reconstruct`: the centre-cropped input and its reconstruction side by side, at the
    tokenizer's resolution, into a folder it creates; the printed PSNR is that of the two halves."""
    from gst_ros.preprocess import psnr_uint8

    tok = Path(files["model"]) / "image_tokenizer"
    out = tmp_path / "new" / "folder" / "recon.png"
    assert main(["reconstruct", files["obs"], "--tokenizer", str(tok), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pair = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    s = pair.shape[0]
    assert pair.shape == (s, 2 * s, 3)
    psnr = float(printed.split("PSNR ")[1].split(" dB")[0])
    assert psnr == pytest.approx(psnr_uint8(pair[:, :s], pair[:, s:]), abs=0.01)


def test_console_entry_point_runs_in_a_subprocess(files):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "gst_ros.cli", "pose", files["obs"], files["tgt"], "--model",
                        files["model"], "--samples", "2", "--json"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["samples"]) == 2
