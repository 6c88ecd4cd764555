"""GSTEngine on the tiny random model: the four tasks, conventions, K handling, seeding, bad
inputs, ONNX backend parity."""
import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from engine_fixtures import TINY_CAMERA, TINY_IMAGE, make_tiny_model

from gst_ros.engine.engine import (
    CODEBOOK_KEY,
    POSITION_VAR_FLOOR,
    ROTATION_VAR_FLOOR,
    EngineConfig,
    GSTEngine,
    ModelNotFoundError,
    PoseEstimate,
    PredictedView,
    default_model_dir,
    head_pose_estimate,
)
from gst_ros.geometry import crop_resize_intrinsics, look_at, plucker_map
from gst_ros.geometry.rotations import rotation_from_covariance
from gst_ros.models.io import ModelFormatError, load_model_dir, load_tensor, save_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("engine"), onnx=True)


@pytest.fixture(scope="module")
def engine(model_dir):
    return GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))


def image(h=48, w=64, seed=0):
    """A smooth colourful test image (gradients + a disc)."""
    v, u = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 2.0, 2)
    img = np.stack([127 + 120 * np.sin(a * u / w * 6), 127 + 120 * np.cos(b * v / h * 6),
                    255 * ((u - w / 2) ** 2 + (v - h / 2) ** 2 < (min(h, w) / 3) ** 2)], -1)
    return img.clip(0, 255).astype(np.uint8)


K_WIDE = np.array([[40.0, 0.0, 31.5], [0.0, 42.0, 23.5], [0.0, 0.0, 1.0]])  # for a 64x48 image
TARGET_W2C = look_at([0.4, -0.1, 0.1], [0.0, 0.0, 1.0], up=(0.0, -1.0, 0.0))


def test_model_parts_and_image_size(engine):
    assert engine.image_size == TINY_IMAGE.resolution
    assert engine.grid == TINY_IMAGE.token_grid == TINY_CAMERA.token_grid
    assert engine.device.type == "cpu"


def test_estimate_pose_shapes_and_conventions(engine):
    est = engine.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=5, seed=3)
    assert isinstance(est, PoseEstimate)
    assert est.w2c.shape == (4, 4) and est.w2c.dtype == np.float64
    assert est.samples_w2c.shape == (5, 4, 4) and est.samples_w2c.dtype == np.float64
    assert est.covariance.shape == (6, 6)
    for T in [est.w2c, *est.samples_w2c]:
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6)
        assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_array_equal(T[3], [0, 0, 0, 1])
    assert np.linalg.eigvalsh(est.covariance).min() > 0
    assert 0.0 <= est.confidence <= 1.0
    assert est.rotation_spread_deg >= 0.0 and est.latency_s > 0.0
    np.testing.assert_allclose(est.camera_to_reference() @ est.w2c, np.eye(4), atol=1e-9)


def spy_on(monkeypatch, name: str) -> dict:
    """Wrap gst_ros.engine.generation.<name>: the returned dict gets the last call's positional
    arguments ("args") and result ("out")."""
    from gst_ros.engine import generation

    seen = {}
    real = getattr(generation, name)

    def spy(*a, **kw):
        seen["args"], seen["out"] = a, real(*a, **kw)
        return seen["out"]

    monkeypatch.setattr(generation, name, spy)
    return seen


def test_estimate_pose_samples_are_decoded_camera_tokens(engine, monkeypatch):
    """The engine's samples are exactly the cameras decoded from the sampled tokens (with the
    known target K at the model resolution), and their average is the estimate."""
    seen = spy_on(monkeypatch, "estimate_pose")
    est = engine.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=3, seed=0)
    _, K_sq = engine.prepare(image(seed=2), K_WIDE)
    g = engine.grid
    fit = engine.camera_tokenizer.decode(seen["out"].reshape(-1, g, g), K=K_sq, image_size=engine.image_size)
    np.testing.assert_allclose(est.samples_w2c, fit.w2c.numpy(), atol=1e-9)


def test_prior_pose_samples_p_c_given_o_without_the_target(engine, monkeypatch):
    """prior_pose draws cameras from [o, <GEN>] (no target image), decodes them exactly like
    estimate_pose and averages them; it is reproducible per seed."""
    seen = spy_on(monkeypatch, "propose_cameras")
    est = engine.prior_pose(image(seed=1), K_WIDE, K_WIDE, samples=3, seed=4)
    assert isinstance(est, PoseEstimate) and est.samples_w2c.shape == (3, 4, 4)
    obs_tok = engine.image_tokens(engine.prepare(image(seed=1), K_WIDE)[0])
    assert torch.equal(seen["args"][1], obs_tok.expand(3, -1))
    _, K_sq = engine.prepare(image(seed=1), K_WIDE)
    g = engine.grid
    codes = seen["out"][0]
    fit = engine.camera_tokenizer.decode(codes.reshape(-1, g, g), K=K_sq, image_size=engine.image_size)
    np.testing.assert_allclose(est.samples_w2c, fit.w2c.numpy(), atol=1e-9)
    again = engine.prior_pose(image(seed=1), K_WIDE, K_WIDE, samples=3, seed=4)
    np.testing.assert_allclose(again.w2c, est.w2c, atol=1e-12)
    with pytest.raises(ValueError, match="samples"):
        engine.prior_pose(image(seed=1), samples=0)


def test_pose_estimate_mode_is_the_most_likely_sample(model_dir, monkeypatch):
    """pose_estimate="mode" returns the sampled pose of highest log p(c | i, o); "mean" the
    average; both share the samples (same seed) and the spread-based covariance."""
    seen = spy_on(monkeypatch, "pose_log_likelihood")
    mode = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", pose_estimate="mode"))
    mean = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    a = mode.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=4, seed=5)
    b = mean.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=4, seed=5)
    np.testing.assert_allclose(a.samples_w2c, b.samples_w2c, atol=1e-9)
    np.testing.assert_allclose(a.covariance, b.covariance, atol=1e-9)
    best = int(torch.argmax(seen["out"]))
    np.testing.assert_allclose(a.w2c, a.samples_w2c[best], atol=1e-12)
    assert not np.allclose(a.w2c, b.w2c, atol=1e-6)  # the mean is none of the samples
    with pytest.raises(ValueError, match="pose_estimate"):
        EngineConfig(model_dir=str(model_dir), pose_estimate="median")


def test_pose_estimate_head_reads_the_pose_head(tmp_path, monkeypatch):
    """pose_estimate "auto" picks the pose head on a model with one: the estimate's rotation is the
    head's (projected onto SO(3)); without a centre head its optical axis passes through the scene
    centre (0, 0, 1) at the samples' median distance, and the samples and covariance are those
    of "mean"."""
    head_dir = make_tiny_model(tmp_path, seed=1, name="with_head", pose_head=True)
    seen = spy_on(monkeypatch, "pose_readout")
    auto = GSTEngine(EngineConfig(model_dir=str(head_dir), device="cpu"))
    assert auto.pose_estimate == "head"
    a = auto.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=4, seed=5)
    b = auto.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=4, seed=5, estimate="mean")
    assert seen["out"].center is None
    R = rotation_from_covariance(seen["out"].rotation.double())[0].numpy()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(a.w2c[:3, :3], R, atol=1e-12)
    centres = np.linalg.inv(a.samples_w2c)[:, :3, 3]
    d = float(np.median(np.linalg.norm(centres - [0.0, 0.0, 1.0], axis=1)))
    np.testing.assert_allclose(a.w2c[:3, :3] @ [0.0, 0.0, 1.0] + a.w2c[:3, 3], [0.0, 0.0, d], atol=1e-9)
    np.testing.assert_allclose(a.samples_w2c, b.samples_w2c, atol=1e-9)
    np.testing.assert_allclose(a.covariance, b.covariance, atol=1e-9)
    assert not np.allclose(a.w2c, b.w2c, atol=1e-6)
    # a different target image changes what the head reads
    c = auto.estimate_pose(image(seed=1), image(seed=7), K_WIDE, K_WIDE, samples=4, seed=5)
    assert not np.allclose(c.w2c[:3, :3], a.w2c[:3, :3], atol=1e-6)


def test_pose_estimate_with_a_centre_head_samples_nothing(tmp_path, monkeypatch):
    """With pose and centre heads, "head" is one forward pass: no camera tokens are sampled, the
    pose is the heads' rotation and centre, the covariance is head_pose_estimate's with the
    calibration written in the transformer's config.json, and a bad calibration value is a
    ModelFormatError that names it."""
    model_dir = make_tiny_model(tmp_path, seed=1, name="with_centre", pose_head=True, center_head=True)
    seen = spy_on(monkeypatch, "mirror_averaged_readout")  # the default read-out: both ways and mirrored
    sampled = spy_on(monkeypatch, "estimate_pose")
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    est = engine.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=4, seed=5)
    assert "out" not in sampled
    readout = seen["out"]
    w2c, cov, conf, spread = head_pose_estimate(readout)
    np.testing.assert_allclose(est.w2c, w2c, atol=1e-12)
    np.testing.assert_allclose(np.linalg.inv(est.w2c)[:3, 3], readout.center[0].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(est.covariance, cov, atol=1e-12)
    assert est.samples_w2c.shape == (1, 4, 4) and 0.0 <= est.confidence <= 1.0
    assert est.uncertainty_from == "heads"
    assert np.all(np.linalg.eigvalsh(est.covariance) > 0)
    # a different target image moves the centre too
    other = engine.estimate_pose(image(seed=1), image(seed=7), K_WIDE, K_WIDE)
    assert not np.allclose(np.linalg.inv(other.w2c)[:3, 3], np.linalg.inv(est.w2c)[:3, 3], atol=1e-6)
    # the calibration scales the predicted variances
    cfg_path = model_dir / "gst" / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["pose_calibration"] = {"rotation_var_scale": 4.0, "center_var_scale": 0.25}
    cfg_path.write_text(json.dumps(meta))
    scaled = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    assert scaled.pose_calibration == {"rotation_var_scale": 4.0, "center_var_scale": 0.25}
    est2 = scaled.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, seed=5)
    floor_p, floor_r = POSITION_VAR_FLOOR * np.eye(3), ROTATION_VAR_FLOOR * np.eye(3)
    np.testing.assert_allclose(est2.covariance[:3, :3] - floor_p, 0.25 * (est.covariance[:3, :3] - floor_p),
                               atol=1e-12)
    np.testing.assert_allclose(est2.covariance[3:, 3:] - floor_r, 4.0 * (est.covariance[3:, 3:] - floor_r),
                               atol=1e-12)
    meta["pose_calibration"] = {"rotation_var_scale": -1.0}
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="rotation_var_scale"):
        GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))


def test_pose_estimate_head_needs_a_pose_head(engine, model_dir):
    assert engine.pose_estimate == "mean"  # "auto" on a model without a head
    with pytest.raises(ValueError, match="no pose head"):
        engine.estimate_pose(image(seed=1), image(seed=2), samples=2, estimate="head")
    with pytest.raises(ValueError, match="no pose head"):
        GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", pose_estimate="head"))


@pytest.mark.parametrize("seed", range(5))
def test_pose_facing_scene_center_looks_at_the_centre(seed):
    """The scene centre (0, 0, 1) of the reference frame lands on the camera's optical axis at the
    given distance, for any rotation."""
    from gst_ros.engine.engine import pose_facing_scene_center
    from gst_ros.geometry import so3_exp

    rng = np.random.default_rng(seed)
    R = so3_exp(torch.from_numpy(rng.normal(size=3))).numpy()
    d = float(rng.uniform(0.3, 3.0))
    w2c = pose_facing_scene_center(R, d)
    np.testing.assert_allclose(w2c[:3, :3], R)
    np.testing.assert_allclose(w2c[:3, :3] @ [0.0, 0.0, 1.0] + w2c[:3, 3], [0.0, 0.0, d], atol=1e-12)
    with pytest.raises(ValueError, match="distance"):
        pose_facing_scene_center(R, float("nan"))


def test_predict_view_shapes_and_conventions(engine):
    obs = image(seed=1)
    view = engine.predict_view(obs, TARGET_W2C, K_obs=K_WIDE, seed=0)
    assert isinstance(view, PredictedView)
    s = engine.image_size
    assert view.image.shape == (s, s, 3) and view.image.dtype == np.uint8
    np.testing.assert_allclose(view.w2c, TARGET_W2C)
    _, K_sq = engine.prepare(obs, K_WIDE)
    np.testing.assert_allclose(view.K, K_sq)  # the observation's K after the crop/resize
    assert view.K[0, 0] == pytest.approx(40.0 * s / 48)


def test_expected_view_is_the_pixel_mean_and_spread_of_its_samples(engine):
    obs = image(seed=1)
    singles = engine.predict_view(obs, TARGET_W2C, K_obs=K_WIDE, seed=5, samples=1)
    assert singles.spread is None and singles.samples == 1
    view = engine.predict_view(obs, TARGET_W2C, K_obs=K_WIDE, seed=5, samples=3)
    assert view.samples == 3 and view.spread.shape == view.image.shape[:2] and view.spread.dtype == np.float32
    # the same three draws, one at a time from the same generator state, are what it averages
    import torch

    gen = torch.Generator().manual_seed(5)
    obs_sq, K_sq = engine.prepare(obs, K_WIDE)
    from gst_ros.engine import generation

    codes = generation.novel_view(engine.model, engine.image_tokens(obs_sq).expand(3, -1),
                                  engine.camera_tokens(K_sq, TARGET_W2C).expand(3, -1), engine.sampling, gen)
    draws = engine._images(codes).astype(np.float64)
    np.testing.assert_array_equal(view.image, np.clip(np.rint(draws.mean(0)), 0, 255).astype(np.uint8))
    np.testing.assert_allclose(view.spread, draws.std(0).mean(-1), atol=1e-3)
    assert view.spread.max() > 0  # a random tiny model's draws differ
    np.testing.assert_array_equal(view.spread_image(), np.rint(view.spread).astype(np.uint8))
    assert singles.spread_image() is None
    assert singles.consistent_sample is None and singles.consistency is None
    # a model without a pose head ranks its draws by log p(c | view, o): the best is kept
    loglik = generation.pose_log_likelihood(engine.model, engine.image_tokens(obs_sq).expand(3, -1), codes,
                                            engine.camera_tokens(K_sq, TARGET_W2C).expand(3, -1))
    np.testing.assert_allclose(view.consistency, loglik.double().numpy(), rtol=1e-5)
    assert (view.consistency < 0).all()
    np.testing.assert_array_equal(view.consistent_sample, draws[int(loglik.argmax())].astype(np.uint8))
    assert (engine.config.view_samples, engine.config.view_keep) == (16, 4)
    default = engine.predict_view(obs, TARGET_W2C, seed=5)
    assert (default.samples, default.kept, view.kept) == (16, 4, 3)


def test_expected_view_averages_the_most_consistent_samples(engine):
    """`keep` of the samples, those the model places closest to the requested camera, make the
    image; the spread stays that of all the samples; keep 0 averages them all."""
    import torch

    from gst_ros.engine import generation

    obs = image(seed=1)
    obs_sq, K_sq = engine.prepare(obs, K_WIDE)
    codes = generation.novel_view(engine.model, engine.image_tokens(obs_sq).expand(5, -1),
                                  engine.camera_tokens(K_sq, TARGET_W2C).expand(5, -1), engine.sampling,
                                  torch.Generator().manual_seed(7))
    draws = engine._images(codes).astype(np.float64)
    views = {k: engine.predict_view(obs, TARGET_W2C, K_obs=K_WIDE, seed=7, samples=5, keep=k)
             for k in (0, 1, 2, 9)}
    order = np.argsort(-views[0].consistency)
    assert len(set(views[0].consistency.round(6))) == 5  # no ties: the two best are well defined
    for k, want in ((0, range(5)), (1, order[:1]), (2, order[:2]), (9, range(5))):
        v = views[k]
        np.testing.assert_array_equal(v.consistency, views[0].consistency)
        mean = np.clip(np.rint(draws[list(want)].mean(0)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(v.image, mean)
        np.testing.assert_allclose(v.spread, draws.std(0).mean(-1), atol=1e-3)
        assert (v.samples, v.kept) == (5, len(want))
        np.testing.assert_array_equal(v.sample_views, draws.astype(np.uint8))   # all, in draw order
    np.testing.assert_array_equal(views[1].image, views[1].consistent_sample)
    assert not np.array_equal(views[2].image, views[0].image)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            engine.predict_view(obs, TARGET_W2C, samples=2, keep=bad)
    with pytest.raises(ValueError, match="view_keep"):
        EngineConfig(view_keep=-2)


def test_view_consistency_with_a_pose_head_is_the_read_rotations_agreement(tmp_path, monkeypatch):
    """With a pose head a sampled view scores minus the angle (degrees) between the requested
    rotation and the rotation the head reads from (observation, view); predict_view keeps the
    view whose reading is closest."""
    from gst_ros.engine import generation
    from gst_ros.models.transformer import HeadReadout

    model_dir = make_tiny_model(tmp_path, seed=4, name="cons", pose_head=True)
    eng = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", pose_symmetric=False))
    # the head "reads" each of the 3 views as the requested rotation turned by 40, 5 and 90 deg
    turns = [40.0, 5.0, 90.0]
    R_req = TARGET_W2C[:3, :3]
    read = [cv2.Rodrigues(np.array([0.0, math.radians(t), 0.0]))[0] @ R_req for t in turns]

    def fake_readout(model, o, i, symmetric=False):
        assert symmetric is eng.config.pose_symmetric and o.shape == i.shape == (3, model.config.layout.n)
        return HeadReadout(torch.tensor(np.stack(read)))

    monkeypatch.setattr(generation, "pose_readout", fake_readout)
    view = eng.predict_view(image(seed=2), TARGET_W2C, K_obs=K_WIDE, seed=3, samples=3)
    np.testing.assert_allclose(view.consistency, [-t for t in turns], atol=1e-6)
    best_two = eng.predict_view(image(seed=2), TARGET_W2C, K_obs=K_WIDE, seed=3, samples=3, keep=2)
    eng.config.pose_symmetric = True   # the default: the samples are read both ways too
    np.testing.assert_allclose(eng.predict_view(image(seed=2), TARGET_W2C, K_obs=K_WIDE, seed=3,
                                                samples=3).consistency, [-t for t in turns], atol=1e-6)
    eng.config.pose_symmetric = False
    monkeypatch.undo()
    # the kept sample is the second draw (same generator state, drawn again here)
    obs_sq, K_sq = eng.prepare(image(seed=2), K_WIDE)
    codes = generation.novel_view(eng.model, eng.image_tokens(obs_sq).expand(3, -1),
                                  eng.camera_tokens(K_sq, TARGET_W2C).expand(3, -1), eng.sampling,
                                  torch.Generator().manual_seed(3))
    draws = eng._images(codes)
    np.testing.assert_array_equal(view.consistent_sample, draws[1])
    # keep=2 averages the draws read 5 and 40 deg from the requested rotation, not the 90 deg one
    mean = np.clip(np.rint(draws[[0, 1]].astype(np.float64).mean(0)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(best_two.image, mean)
    assert best_two.kept == 2 and not np.array_equal(best_two.image, view.image)
    # unmocked, the scores are angles in [0, 180] degrees, negated
    real = eng.predict_view(image(seed=2), TARGET_W2C, K_obs=K_WIDE, seed=3, samples=3).consistency
    assert real.shape == (3,) and ((real <= 0) & (real >= -180)).all()


def test_expected_view_of_identical_samples_is_that_sample():
    from gst_ros.engine.engine import expected_view

    v = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mean, spread = expected_view(np.stack([v, v, v]))
    np.testing.assert_array_equal(mean, v)
    assert not spread.any()
    mean, spread = expected_view(np.stack([np.zeros_like(v), np.full_like(v, 200)]))
    assert (mean == 100).all() and np.allclose(spread, 100.0)
    with pytest.raises(ValueError, match="views"):
        expected_view(np.zeros((8, 8, 3), np.uint8))


def test_predict_view_uses_the_requested_pose(engine, monkeypatch):
    """The camera tokens fed to the transformer are those of the target camera's Plücker map
    at the camera-map resolution (K scaled from the model image size to the map size)."""
    from gst_ros.engine import generation

    seen = {}
    real = generation.novel_view

    def spy(model, obs, cam, *a, **kw):
        seen["cam"] = cam.clone()
        return real(model, obs, cam, *a, **kw)

    monkeypatch.setattr(generation, "novel_view", spy)
    engine.predict_view(image(seed=1), TARGET_W2C, K_obs=K_WIDE, seed=0)
    _, K_sq = engine.prepare(image(seed=1), K_WIDE)
    m = TINY_CAMERA.resolution
    K_map = crop_resize_intrinsics(K_sq, (0, 0, engine.image_size, engine.image_size), (m, m))
    want = engine.camera_tokenizer.encode_maps(plucker_map(K_map, TARGET_W2C, m, m))
    # one row per sample (view_samples)
    torch.testing.assert_close(seen["cam"].cpu(), want.reshape(1, -1).expand(16, -1))


def test_propose_and_unconditional_views(engine):
    views = engine.propose_views(image(seed=4), n=3, K_obs=K_WIDE, seed=1)
    assert len(views) == 3
    s = engine.image_size
    for v in views:
        assert v.image.shape == (s, s, 3) and v.image.dtype == np.uint8
        assert v.w2c.shape == (4, 4) and v.K.shape == (3, 3)
        np.testing.assert_allclose(v.w2c[:3, :3] @ v.w2c[:3, :3].T, np.eye(3), atol=1e-6)
    assert not np.allclose(views[0].w2c, views[1].w2c)  # independent samples
    u = engine.unconditional_view(image(seed=4), K_obs=K_WIDE, seed=1)
    assert u.image.shape == (s, s, 3) and u.image.dtype == np.uint8 and u.w2c.shape == (4, 4)


def test_seeded_reproducibility(engine, model_dir):
    obs, tgt = image(seed=5), image(seed=6)
    a = engine.estimate_pose(obs, tgt, samples=3, seed=7)
    b = engine.estimate_pose(obs, tgt, samples=3, seed=7)
    c = engine.estimate_pose(obs, tgt, samples=3, seed=8)
    np.testing.assert_array_equal(a.samples_w2c, b.samples_w2c)
    assert not np.array_equal(a.samples_w2c, c.samples_w2c)
    v1 = engine.predict_view(obs, TARGET_W2C, seed=3)
    v2 = engine.predict_view(obs, TARGET_W2C, seed=3)
    np.testing.assert_array_equal(v1.image, v2.image)
    # seed=None: a fresh engine replays the same sequence; successive calls differ
    e1 = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", seed=11))
    e2 = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", seed=11))
    p1 = [e1.propose_views(obs, n=2)[0].image for _ in range(2)]
    p2 = [e2.propose_views(obs, n=2)[0].image for _ in range(2)]
    np.testing.assert_array_equal(p1[0], p2[0])
    np.testing.assert_array_equal(p1[1], p2[1])
    assert not np.array_equal(p1[0], p1[1])


def test_image_codes_are_cached_by_pixels_and_equal_a_fresh_encode(model_dir, monkeypatch):
    """A reference read against new frames is tokenised once; cached codes equal fresh ones, and
    the cache holds at most IMAGE_CODE_CACHE images (least recently used leaves first)."""
    from gst_ros.engine import engine as engine_module

    e = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    encoded = []
    encode = e.image_tokenizer.encode
    monkeypatch.setattr(e.image_tokenizer, "encode", lambda x: encoded.append(len(x)) or encode(x))
    ref = e.prepare(image(seed=1))[0]
    frames = [e.prepare(image(seed=s))[0] for s in (2, 3)]
    first = e.image_codes(np.stack([ref, frames[0], ref]))     # a repeat in one batch: encoded once
    assert encoded == [2]
    np.testing.assert_array_equal(first[0].numpy(), first[2].numpy())
    again = e.image_codes(np.stack([ref, frames[1]]))           # only the new frame is encoded
    assert encoded == [2, 1]
    np.testing.assert_array_equal(again[0].numpy(), first[0].numpy())
    for got, im in zip((first[1], again[1]), frames):
        np.testing.assert_array_equal(got.numpy(), encode(im).reshape(-1).numpy())
    assert not np.array_equal(first[1].numpy(), again[1].numpy())
    e.estimate_pose(image(seed=1), image(seed=2), samples=2)    # both images known: nothing encoded
    assert encoded == [2, 1]
    monkeypatch.setattr(engine_module, "IMAGE_CODE_CACHE", 2)
    e.image_codes(np.stack([e.prepare(image(seed=s))[0] for s in (4, 5)]))
    assert len(e._code_cache) == 2
    e.image_codes(ref[None])                                    # evicted: encoded again
    assert encoded[-1] == 1 and len(e._code_cache) == 2


def test_non_square_image_with_K_equals_the_precropped_equivalent(engine):
    """A 96x64 image with its K gives the same model input, rays and results as its centre
    crop resized to the model resolution with the correspondingly transformed K."""
    big = image(64, 96, seed=9)
    K_big = np.array([[70.0, 0.0, 47.5], [0.0, 72.0, 31.5], [0.0, 0.0, 1.0]])
    s = engine.image_size
    # what a user would do by hand: crop the centre 64x64 square, shrink it to the model size
    pre = cv2.resize(big[:, 16:80], (s, s), interpolation=cv2.INTER_AREA)
    K_pre = crop_resize_intrinsics(K_big, (16, 0, 64, 64), (s, s))
    sq, K_sq = engine.prepare(big, K_big)
    np.testing.assert_array_equal(sq, pre)
    np.testing.assert_allclose(K_sq, K_pre, atol=1e-12)
    sq2, K_sq2 = engine.prepare(pre, K_pre)
    np.testing.assert_array_equal(sq2, sq)
    np.testing.assert_allclose(K_sq2, K_pre, atol=1e-12)
    m = TINY_CAMERA.resolution
    rays_a = plucker_map(crop_resize_intrinsics(K_sq, (0, 0, s, s), (m, m)), TARGET_W2C, m, m)
    # the same rays straight from the original image: the map covers the centre square of it
    rays_b = plucker_map(crop_resize_intrinsics(K_big, (16, 0, 64, 64), (m, m)), TARGET_W2C, m, m)
    torch.testing.assert_close(rays_a, rays_b, atol=1e-6, rtol=0)
    torch.testing.assert_close(engine.camera_tokens(K_sq, TARGET_W2C),
                               engine.camera_tokens(K_pre, TARGET_W2C))
    a = engine.estimate_pose(big, big, K_big, K_big, samples=2, seed=1)
    b = engine.estimate_pose(pre, pre, K_pre, K_pre, samples=2, seed=1)
    np.testing.assert_allclose(a.samples_w2c, b.samples_w2c, atol=1e-9)
    va = engine.predict_view(big, TARGET_W2C, K_obs=K_big, seed=2)
    vb = engine.predict_view(pre, TARGET_W2C, K_obs=K_pre, seed=2)
    np.testing.assert_array_equal(va.image, vb.image)
    np.testing.assert_allclose(va.K, vb.K, atol=1e-12)


def test_default_intrinsics_use_the_fov_across_the_shorter_side(engine):
    for h, w in [(48, 64), (64, 48), (32, 32)]:
        K = engine.intrinsics_or_default(image(h, w))
        short = min(h, w)
        fov = 2 * math.degrees(math.atan(short / 2 / K[0, 0]))
        assert fov == pytest.approx(49.1, abs=1e-9)
        assert K[0, 2] == pytest.approx((w - 1) / 2) and K[1, 2] == pytest.approx((h - 1) / 2)
    # once cropped to the model's square the default FOV is 49.1 deg across the whole image
    _, K_sq = engine.prepare(image(48, 64))
    s = engine.image_size
    assert 2 * math.degrees(math.atan(s / 2 / K_sq[1, 1])) == pytest.approx(49.1, abs=1e-9)


def test_onnx_backend_gives_identical_tokens(engine, model_dir):
    onnx = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", tokenizer_backend="onnx"))
    for seed in range(3):
        sq, K_sq = engine.prepare(image(seed=seed), K_WIDE)
        torch.testing.assert_close(onnx.image_tokens(sq), engine.image_tokens(sq))
        torch.testing.assert_close(onnx.camera_tokens(K_sq, TARGET_W2C),
                                   engine.camera_tokens(K_sq, TARGET_W2C))
    a = engine.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=2, seed=4)
    b = onnx.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=2, seed=4)
    np.testing.assert_allclose(a.samples_w2c, b.samples_w2c, atol=1e-4)
    va = engine.predict_view(image(seed=1), TARGET_W2C, seed=4)
    vb = onnx.predict_view(image(seed=1), TARGET_W2C, seed=4)
    assert np.abs(va.image.astype(int) - vb.image.astype(int)).max() <= 1


@pytest.mark.parametrize("call, msg", [
    (lambda e: e.estimate_pose(image().astype(np.float32), image()), "uint8"),
    (lambda e: e.estimate_pose(image()[..., 0], image()), r"\(H, W, 3\)"),
    (lambda e: e.estimate_pose([[1, 2, 3]], image()), "numpy array"),
    (lambda e: e.estimate_pose(image(), image()[:, :, :2]), "target"),
    (lambda e: e.estimate_pose(image(), image(), K_obs=np.eye(3) * np.nan), "NaN"),
    (lambda e: e.estimate_pose(image(), image(), K_obs=np.diag([0.0, 1.0, 1.0])), "focal"),
    (lambda e: e.estimate_pose(image(), image(), K_target=np.eye(4)), "shape"),
    (lambda e: e.estimate_pose(image(), image(), K_target=np.array([[50.0, 0, 320], [0, 50, 24], [0, 0, 1]])),
     r"target: K: principal point \(320, 24\) lies far outside the 64x48 image"),
    (lambda e: e.predict_view(image(), TARGET_W2C, K_obs=np.array([[50.0, 0, 20], [0, 50, -49], [0, 0, 1]])),
     "principal point"),
    (lambda e: e.estimate_pose(image(), image(), samples=0), "samples"),
    (lambda e: e.predict_view(image(), np.ones((4, 4))), "w2c_target"),
    (lambda e: e.predict_view(image(), np.eye(3)), "w2c_target"),
    (lambda e: e.predict_view(image(), np.diag([1.0, 1.0, -1.0, 1.0])), "determinant"),
    (lambda e: e.propose_views(image(), n=0), "n must be"),
    (lambda e: e.unconditional_view(np.zeros((0, 5, 3), np.uint8)), "size"),
])
def test_bad_inputs_raise_clear_errors(engine, call, msg):
    with pytest.raises(ValueError, match=msg):
        call(engine)


def test_bad_config_and_model_dirs(tmp_path, model_dir):
    with pytest.raises(ModelNotFoundError, match="train"):
        GSTEngine(EngineConfig(model_dir=str(tmp_path / "nope"), device="cpu"))
    with pytest.raises(ValueError, match="tokenizer_backend"):
        GSTEngine(EngineConfig(model_dir=str(model_dir), tokenizer_backend="tensorrt"))
    with pytest.raises(ValueError, match="top_p"):
        GSTEngine(EngineConfig(model_dir=str(model_dir), top_p=0.0))
    with pytest.raises(ValueError, match="device"):
        GSTEngine(EngineConfig(model_dir=str(model_dir), device="nonsense"))
    # a transformer whose vocabulary does not fit the tokenizers
    bad = make_tiny_model(tmp_path, name="bad")
    meta, state = load_model_dir(bad / "camera_tokenizer")
    cfg = dict(meta["config"], codebook_size=16)
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"][:16]
    save_model_dir(bad / "camera_tokenizer", "camera_tokenizer", cfg, state)
    with pytest.raises(ModelFormatError, match="camera_vocab"):
        GSTEngine(EngineConfig(model_dir=str(bad), device="cpu"))
    (bad / "gst" / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="config.json"):
        GSTEngine(EngineConfig(model_dir=str(bad), device="cpu"))


def test_tokenizer_from_another_training_is_refused(tmp_path):
    """A transformer with codebook features runs only with the tokenizers whose codebooks they
    hold: an image tokenizer from another training (the same shapes, other codes) is a
    ModelFormatError naming it, before any call could feed the transformer unknown codes."""
    good = make_tiny_model(tmp_path, name="features", image_code_dim=4, camera_code_dim=4)
    meta, state = load_model_dir(good / "gst")
    for kind in ("image", "camera"):
        _, tok = load_model_dir(good / f"{kind}_tokenizer")
        book = tok[CODEBOOK_KEY].float()
        state[f"{kind}_codebook"] = torch.nn.functional.normalize(book, dim=-1)
    save_model_dir(good / "gst", "gst", meta["config"], state)
    engine = GSTEngine(EngineConfig(model_dir=str(good), device="cpu"))
    torch.testing.assert_close(engine.model.image_codebook, state["image_codebook"])
    assert np.isfinite(engine.estimate_pose(image(), image(seed=3), samples=1).w2c).all()
    other = make_tiny_model(tmp_path, seed=1, name="other")
    shutil.rmtree(good / "image_tokenizer")
    shutil.copytree(other / "image_tokenizer", good / "image_tokenizer")
    with pytest.raises(ModelFormatError, match="image tokenizer's codebook is not the one"):
        GSTEngine(EngineConfig(model_dir=str(good), device="cpu"))
    # the check reads the codebook alone from the tokenizer's file; a bad file is named
    torch.testing.assert_close(load_tensor(other / "image_tokenizer", CODEBOOK_KEY),
                               load_model_dir(other / "image_tokenizer")[1][CODEBOOK_KEY])
    with pytest.raises(ModelFormatError, match="no tensor 'nope'"):
        load_tensor(other / "image_tokenizer", "nope")
    weights = good / "image_tokenizer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_tensor(good / "image_tokenizer", CODEBOOK_KEY)
    # features never set (all zero) are not checked: such a model loads with any tokenizer
    GSTEngine(EngineConfig(model_dir=str(make_tiny_model(tmp_path, name="unset", image_code_dim=4)),
                           device="cpu"))


def test_default_model_dir_points_at_gst_small():
    d = default_model_dir()
    assert d.name == "gst_small" and d.parent.name == "models"
    assert EngineConfig().model_dir == str(d)


def test_degenerate_sampled_rays_are_dropped_not_fatal(engine, monkeypatch):
    """A sample whose decoded rays admit no camera is left out; when none fits: RuntimeError."""
    from gst_ros.geometry import GeometryError

    tok = engine.camera_tokenizer
    real = type(tok).decode
    calls = []

    def flaky(self, tokens, K=None, image_size=None):
        calls.append(len(tokens))
        if len(tokens) > 1 or len(calls) == 2:  # the batch fails, then the first single sample
            raise GeometryError("rays are all parallel")
        return real(self, tokens, K=K, image_size=image_size)

    monkeypatch.setattr(type(tok), "decode", flaky)
    est = engine.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE, samples=3, seed=0)
    assert est.samples_w2c.shape == (2, 4, 4) and calls == [3, 1, 1, 1]
    views = engine.propose_views(image(seed=1), n=3, K_obs=K_WIDE, seed=0)
    assert len(views) == 3  # calls now > 2: only batches fail, every single sample fits

    def broken(self, tokens, K=None, image_size=None):
        raise GeometryError("rays are all parallel")

    monkeypatch.setattr(type(tok), "decode", broken)
    with pytest.raises(RuntimeError, match="degenerate"):
        engine.estimate_pose(image(seed=1), image(seed=2), samples=2, seed=0)


def test_symmetric_head_read_out_is_consistent_both_ways(tmp_path):
    """pose_symmetric averages the forward estimate with the swapped pair's inverse: reading
    (o, i) gives exactly the transpose of reading (i, o), the average of the two one-way
    matrices; its centre is the averaged rotation's object-centric placement plus the forward
    correction; pose_symmetric=False is the one-way read-out."""
    from gst_ros.engine.generation import pose_readout
    from gst_ros.geometry import center_facing_scene

    model_dir = make_tiny_model(tmp_path, seed=2, name="sym", pose_head=True, center_head=True)
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu"))
    torch.nn.init.normal_(engine.model.center_head[-1].weight, std=0.02)  # a non-zero correction
    rng = torch.Generator().manual_seed(0)
    o = torch.randint(0, TINY_IMAGE.codebook_size, (3, TINY_IMAGE.token_grid ** 2), generator=rng)
    i = torch.randint(0, TINY_IMAGE.codebook_size, (3, TINY_IMAGE.token_grid ** 2), generator=rng)
    ab = pose_readout(engine.model, o, i, symmetric=True)
    ba = pose_readout(engine.model, i, o, symmetric=True)
    torch.testing.assert_close(ab.rotation, ba.rotation.transpose(1, 2))
    fwd, back = pose_readout(engine.model, o, i), pose_readout(engine.model, i, o)
    torch.testing.assert_close(ab.rotation, 0.5 * (fwd.rotation + back.rotation.transpose(1, 2)))
    assert not torch.allclose(ab.rotation, fwd.rotation)
    correction = fwd.center - center_facing_scene(rotation_from_covariance(fwd.rotation))
    assert float(correction.abs().max()) > 1e-4
    placement = center_facing_scene(rotation_from_covariance(ab.rotation))
    torch.testing.assert_close(ab.center, placement + correction)
    torch.testing.assert_close(ab.center_log_var, fwd.center_log_var)
    one_way = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", pose_symmetric=False))
    one_way.model.load_state_dict(engine.model.state_dict())
    a = engine.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE)
    b = one_way.estimate_pose(image(seed=1), image(seed=2), K_WIDE, K_WIDE)
    assert not np.allclose(a.w2c[:3, :3], b.w2c[:3, :3], atol=1e-6)


def test_mirror_read_out_maps_the_mirrored_pair_back(tmp_path, monkeypatch):
    """pose_mirror averages the read-out with that of the pair flipped left-right, mapped back by
    F = diag(-1, 1, 1): rotation F M F, centre F C. Reading a pair and its mirror image gives
    mirror images of each other's estimate; the engine flips both images it was given."""
    from gst_ros.engine import generation
    from gst_ros.engine.generation import mirror_averaged_readout, mirror_readout, pose_readout
    from gst_ros.geometry import center_facing_scene

    F = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    model_dir = make_tiny_model(tmp_path, seed=3, name="mir", pose_head=True, center_head=True)
    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", pose_symmetric=False))
    torch.nn.init.normal_(engine.model.center_head[-1].weight, std=0.02)
    rng = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, TINY_IMAGE.codebook_size, (2, TINY_IMAGE.token_grid ** 2), generator=rng)
             for _ in range(4)]
    o, i, om, im = codes
    direct, mirrored = pose_readout(engine.model, o, i), pose_readout(engine.model, om, im)
    back = mirror_readout(mirrored)
    torch.testing.assert_close(back.rotation, F @ mirrored.rotation @ F)
    torch.testing.assert_close(back.center, mirrored.center @ F)
    torch.testing.assert_close(mirror_readout(back).rotation, mirrored.rotation)  # F is its own inverse
    avg = mirror_averaged_readout(engine.model, o, i, om, im)
    torch.testing.assert_close(avg.rotation, 0.5 * (direct.rotation + back.rotation))
    corr = [r.center - center_facing_scene(rotation_from_covariance(r.rotation)) for r in (direct, back)]
    torch.testing.assert_close(avg.center, center_facing_scene(rotation_from_covariance(avg.rotation))
                               + 0.5 * (corr[0] + corr[1]))
    torch.testing.assert_close(avg.center_log_var.exp(),
                               0.5 * (direct.center_log_var.exp() + mirrored.center_log_var.exp()))
    # swapping the roles of the pair and its mirror image gives the mirror image of the estimate
    swapped = mirror_averaged_readout(engine.model, om, im, o, i)
    torch.testing.assert_close(swapped.rotation, F @ avg.rotation @ F)
    torch.testing.assert_close(swapped.center, avg.center @ F)

    # the engine feeds the codes of both images, then of both flipped left-right
    seen = {}
    real = generation.mirror_averaged_readout

    def spy(model, *codes_in, **kw):
        seen["codes"] = codes_in
        return real(model, *codes_in, **kw)

    monkeypatch.setattr(generation, "mirror_averaged_readout", spy)
    obs, tgt = image(seed=1), image(seed=2)
    est = engine.estimate_pose(obs, tgt, K_WIDE, K_WIDE)
    obs_sq, _ = engine.prepare(obs, K_WIDE)
    tgt_sq, _ = engine.prepare(tgt, K_WIDE)
    for got, img in zip(seen["codes"], (obs_sq, tgt_sq, obs_sq[:, ::-1], tgt_sq[:, ::-1])):
        torch.testing.assert_close(got, engine.image_tokens(np.ascontiguousarray(img)))
    no_mirror = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", pose_symmetric=False,
                                       pose_mirror=False))
    no_mirror.model.load_state_dict(engine.model.state_dict())
    plain = no_mirror.estimate_pose(obs, tgt, K_WIDE, K_WIDE)
    assert not np.allclose(est.w2c[:3, :3], plain.w2c[:3, :3], atol=1e-6)
