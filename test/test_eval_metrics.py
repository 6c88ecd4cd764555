"""Evaluation maths on cases with known answers: PSNR/SSIM, rotation accuracy by the CO3D
protocol, angular-baseline bins, the chance baseline and the OpenCV essential-matrix baseline."""
import numpy as np
import pytest
import torch

from gst_ros.geometry import look_at, relative_pose
from gst_ros.geometry.rotations import so3_exp
from training import baselines, evaluate
from training.image_metrics import gaussian_window, psnr, ssim


def rot(axis, deg):
    w = np.asarray(axis, dtype=np.float64)
    w = w / np.linalg.norm(w) * np.deg2rad(deg)
    return so3_exp(torch.as_tensor(w)).numpy()


def pose(R, t=(0.0, 0.0, 0.0)):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


# ------------------------------------------------------------------ image metrics

def test_psnr_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 255, np.uint8)
    assert psnr(a, b)[0] == pytest.approx(0.0)  # mse 1 on data range 1
    c = np.full((8, 8, 3), 0.1)
    d = np.full((8, 8, 3), 0.2)
    assert psnr(c, d)[0] == pytest.approx(20.0)  # mse 0.01 -> 20 dB
    assert psnr(c, c)[0] == pytest.approx(100.0)  # identical: the cap
    batch = psnr(np.stack([c, c]), np.stack([d, c]))
    np.testing.assert_allclose(batch, [20.0, 100.0])


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 3))
    assert ssim(x, x)[0] == pytest.approx(1.0, abs=1e-12)
    # two constant images: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) (variances are 0)
    a, b = np.full((16, 16, 3), 0.2), np.full((16, 16, 3), 0.6)
    c1 = 0.01 ** 2
    assert ssim(a, b)[0] == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1), rel=1e-9)
    # an image and its negative are anti-correlated: SSIM < 0; noise lowers SSIM monotonically
    assert ssim(x, 1 - x)[0] < 0
    noisy = [np.clip(x + s * rng.standard_normal(x.shape), 0, 1) for s in (0.02, 0.1, 0.3)]
    vals = [ssim(x, n)[0] for n in noisy]
    assert vals[0] > vals[1] > vals[2]
    w = gaussian_window(11, 1.5)
    assert w.sum().item() == pytest.approx(1.0) and w[5, 5] == w.max()


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssim(np.full((16, 16, 3), 2.0), np.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


# ------------------------------------------------------------------ rotation accuracy

def test_rotation_errors_on_hand_made_poses():
    """3 true cameras; the prediction rotates camera 2 by 20 deg about its own axis: pairs touching
    camera 2 have error 20, the pair (0, 1) none."""
    gt = np.stack([pose(np.eye(3)), pose(rot([0, 1, 0], 40)), pose(rot([1, 0, 0], 70))])
    pred = gt.copy()
    pred[2, :3, :3] = rot([0, 0, 1], 20) @ gt[2, :3, :3]
    from gst_ros.geometry import relative_rotation_errors

    err = relative_rotation_errors(pred[:, :3, :3], gt[:, :3, :3])
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    for (i, j), e in zip(pairs, err):
        assert e == pytest.approx(20.0 if 2 in (i, j) else 0.0, abs=1e-6)
    base = evaluate.ordered_pair_baselines(gt)
    assert base[pairs.index((0, 1))] == pytest.approx(40.0)
    assert base[pairs.index((2, 0))] == pytest.approx(70.0)


def test_category_averaging_and_bins():
    """Category A: 4 pairs, 1 correct; category B: 1 pair, correct. Pooled accuracy would be
    2/5 = 0.4; the CO3D protocol averages per category: (0.25 + 1) / 2 = 0.625."""
    rows = []
    for e, b in [(5, 10), (40, 10), (40, 45), (40, 90)]:
        rows.append({"method": "gst", "group": "seen", "category": "A", "baseline_deg": b, "rot_err_deg": e})
    rows.append({"method": "gst", "group": "seen", "category": "B", "baseline_deg": 50, "rot_err_deg": 1})
    rows.append({"method": "gst", "group": "unseen", "category": "A", "baseline_deg": 5, "rot_err_deg": 20})
    table = {(r["method"], r["group"]): r for r in evaluate.summarize_pose(rows)}
    seen = table[("gst", "seen")]
    assert seen["RRA@15"] == pytest.approx(0.625)
    assert seen["RRA@30"] == pytest.approx(0.625)
    assert seen["pairs"] == 5
    assert seen["RRA@15 <30"] == pytest.approx(0.5)          # only category A: 1 of 2
    assert seen["RRA@15 30-60"] == pytest.approx(0.5)        # A: 0 of 1, B: 1 of 1
    assert seen["RRA@15 >60"] == pytest.approx(0.0)
    assert (seen["pairs <30"], seen["pairs 30-60"], seen["pairs >60"]) == (2, 2, 1)
    unseen = table[("gst", "unseen")]
    assert (unseen["RRA@15"], unseen["RRA@30"]) == (0.0, 1.0)
    chance = table[("chance", "seen")]
    assert chance["RRA@30"] == pytest.approx(baselines.chance_rotation_accuracy(30))


def test_chance_accuracy_matches_monte_carlo():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((200000, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    angles = np.degrees(2 * np.arccos(np.abs(q[:, 0])))  # Haar-uniform rotations' angles
    for t in (15, 30, 90):
        assert baselines.chance_rotation_accuracy(t) == pytest.approx((angles < t).mean(), abs=3e-3)
    assert baselines.chance_rotation_accuracy(180) == pytest.approx(1.0)


def test_identity_baseline_through_evaluate_scenes():
    """The identity baseline's rotation error equals each pair's angular baseline exactly."""
    eyes = [np.array([2.0, 0.0, 0.5]), np.array([0.0, 2.0, 0.5]), np.array([-1.4, 1.4, 1.0])]
    w2c = np.stack([look_at(e, [0, 0, 0]) for e in eyes])
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 31.5], [0, 0, 1]])
    images = np.zeros((3, 64, 64, 3), np.uint8)
    scene = evaluate.EvalScene(images, np.stack([K] * 3), w2c, "s0", "cat", "seen")
    res = evaluate.evaluate_scenes([scene], engine=None, methods=("identity",), progress=False)
    errs = np.array([r["rot_err_deg"] for r in res["pairs"]])
    base = np.array([r["baseline_deg"] for r in res["pairs"]])
    assert len(errs) == 6
    np.testing.assert_allclose(errs, base, atol=1e-6)
    assert res["scenes"][0]["cc_acc@0.1"] == 0.0  # identity puts every camera at the origin
    md = evaluate.markdown_table(evaluate.summarize(res))
    assert "| identity | seen | 6 |" in md and "chance" in md


def test_gst_head_method_through_evaluate_scenes(tmp_path):
    """With a model that has a pose head, the default methods add gst-head, whose predicted
    rotations are the engine's head read-out; without a head it is left out."""
    from engine_fixtures import make_tiny_model

    from gst_ros.engine.engine import EngineConfig, GSTEngine

    eyes = [np.array([2.0, 0.0, 0.5]), np.array([0.0, 2.0, 0.5]), np.array([-1.4, 1.4, 1.0])]
    w2c = np.stack([look_at(e, [0, 0, 0]) for e in eyes])
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 31.5], [0, 0, 1]])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    scene = evaluate.EvalScene(images, np.stack([K] * 3), w2c, "s0", "cat", "seen")
    head = GSTEngine(EngineConfig(model_dir=str(make_tiny_model(tmp_path, name="h", pose_head=True)),
                                  device="cpu"))
    plain = GSTEngine(EngineConfig(model_dir=str(make_tiny_model(tmp_path, name="p")), device="cpu"))
    assert evaluate.default_methods(head) == list(evaluate.POSE_METHODS)
    assert "gst-head" not in evaluate.default_methods(plain) and "gst" in evaluate.default_methods(plain)
    pred, failed = evaluate.predict_poses(scene, "gst-head", head, samples=2, seed=0)
    assert failed == 0
    np.testing.assert_allclose(pred[0], np.eye(4))
    for j in (1, 2):
        est = head.estimate_pose(images[0], images[j], K_obs=K, K_target=K, samples=2, seed=j,
                                 estimate="head")
        np.testing.assert_allclose(pred[j], est.w2c, atol=1e-12)
    res = evaluate.evaluate_scenes([scene], engine=head, nvs=False, progress=False)
    assert {r["method"] for r in res["pairs"]} == set(evaluate.POSE_METHODS)


def _orbit_gallery(n=6, size=16):
    """n cameras on a circle looking at the origin (360/n deg apart) and n distinct random images."""
    angles = np.deg2rad(np.arange(n) * 360.0 / n)
    w2c = np.stack([look_at([2 * np.cos(a), 2 * np.sin(a), 0.5], [0, 0, 0]) for a in angles])
    images = np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, w2c


def test_side_retrieval_finds_the_requested_view_and_scores_copies():
    images, w2c = _orbit_gallery()
    target = 3
    # a noisy version of the requested view is nearest to it: a hit, error 0
    noisy = np.clip(images[target].astype(int) + np.random.default_rng(2).integers(-20, 21, images[0].shape),
                    0, 255).astype(np.uint8)
    r = evaluate.side_retrieval(noisy, images, w2c, target)
    assert r.retrieved == target and r.hit and r.error_deg == pytest.approx(0.0, abs=1e-5)
    # copying the observation (view 0) retrieves view 0: the error is the pair's baseline (180 deg)
    r = evaluate.side_retrieval(images[0], images, w2c, target)
    assert r.retrieved == 0 and not r.hit
    ref = np.degrees(np.arccos(np.clip((np.trace(w2c[0, :3, :3] @ w2c[target, :3, :3].T) - 1) / 2, -1, 1)))
    assert r.error_deg == pytest.approx(ref, abs=1e-4)
    # the neighbouring view: 60 deg off; chance's expected error is the mean angle over the gallery
    r = evaluate.side_retrieval(images[2], images, w2c, target)
    assert r.retrieved == 2 and r.error_deg == pytest.approx(60.0, abs=1e-3)
    assert r.chance_error_deg == pytest.approx(np.mean([0, 60, 120, 180, 120, 60][::-1]), abs=0.05)
    with pytest.raises(ValueError, match="shape"):
        evaluate.side_retrieval(images[0][:8], images, w2c, target)
    with pytest.raises(ValueError, match="target"):
        evaluate.side_retrieval(images[0], images, w2c, 6)


def test_retrieval_gallery_puts_the_evaluated_views_first():
    images, w2c = _orbit_gallery(size=32)
    K = np.array([[30.0, 0, 15.5], [0, 30.0, 15.5], [0, 0, 1]])
    Ks = np.stack([K] * 6)
    scene = evaluate.EvalScene(images[:3], Ks[:3], w2c[:3], "s", "c", "seen",
                               other_images=images[3:], other_K=Ks[3:], other_w2c=w2c[3:])
    gallery, gw2c = evaluate.retrieval_gallery(scene, 16)
    assert gallery.shape == (6, 16, 16, 3) and gallery.dtype == np.uint8
    np.testing.assert_allclose(gw2c, w2c)
    plain = evaluate.EvalScene(images[:3], Ks[:3], w2c[:3], "s", "c", "seen")
    assert evaluate.retrieval_gallery(plain, 16)[0].shape == (3, 16, 16, 3)


# ------------------------------------------------------------------ OpenCV baseline

def _textured_scene_pair(size=384):
    """Two renders of randomly textured boxes from cameras ~23 deg apart (pybullet, CPU)."""
    import cv2
    import pybullet as p

    from gst_ros.sim.pybullet_camera import projection_list_from_K, view_matrix_from_w2c

    rng = np.random.default_rng(0)
    cid = p.connect(p.DIRECT)
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for i in range(14):
                tex = cv2.resize(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (256, 256),
                                 interpolation=cv2.INTER_CUBIC)
                path = f"{tmp}/tex{i}.png"
                cv2.imwrite(path, tex)
                t = p.loadTexture(path, physicsClientId=cid)
                vs = p.createVisualShape(p.GEOM_BOX, halfExtents=rng.uniform(0.15, 0.35, 3).tolist(),
                                         physicsClientId=cid)
                quat = p.getQuaternionFromEuler(rng.uniform(-1, 1, 3).tolist())
                b = p.createMultiBody(0, -1, vs, basePosition=rng.uniform(-0.6, 0.6, 3).tolist(),
                                      baseOrientation=quat,
                                      physicsClientId=cid)
                p.changeVisualShape(b, -1, textureUniqueId=t, rgbaColor=[1, 1, 1, 1], physicsClientId=cid)
            f = size * 330 / 384
            K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
            cams = [look_at([2.5, 0, 0.8], [0, 0, 0]),
                    look_at([2.5 * np.cos(0.4), 2.5 * np.sin(0.4), 1.0], [0, 0, 0])]
            imgs = []
            for w2c in cams:
                _, _, rgb, _, _ = p.getCameraImage(size, size, view_matrix_from_w2c(w2c),
                                                   projection_list_from_K(K, size, size, 0.05, 20),
                                                   lightDirection=[1, 1, 2], shadow=0,
                                                   renderer=p.ER_TINY_RENDERER, physicsClientId=cid)
                imgs.append(np.asarray(rgb, np.uint8).reshape(size, size, 4)[..., :3].copy())
    finally:
        p.disconnect(cid)
    return imgs, K, cams


def test_opencv_baseline_recovers_known_rotation():
    (img_a, img_b), K, (w2c_a, w2c_b) = _textured_scene_pair()
    truth = relative_pose(w2c_a, w2c_b)
    res = baselines.essential_matrix_pose(img_a, img_b, K)
    assert res.ok and res.method == "sift" and res.inliers >= 20
    from gst_ros.geometry import rotation_error_deg

    true_angle = rotation_error_deg(truth[:3, :3], np.eye(3))
    assert true_angle > 20  # a real rotation to recover
    assert rotation_error_deg(res.rel_w2c[:3, :3], truth[:3, :3]) < 3.0
    t_true = truth[:3, 3] / np.linalg.norm(truth[:3, 3])
    assert np.degrees(np.arccos(np.clip(res.rel_w2c[:3, 3] @ t_true, -1, 1))) < 10.0
    orb = baselines.essential_matrix_pose(img_a, img_b, K, detector="orb")
    assert orb.ok and rotation_error_deg(orb.rel_w2c[:3, :3], truth[:3, :3]) < 5.0


def test_opencv_baseline_fails_cleanly_on_blank_images():
    blank = np.full((64, 64, 3), 128, np.uint8)
    K = np.array([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    res = baselines.essential_matrix_pose(blank, blank, K)
    assert not res.ok
    np.testing.assert_array_equal(res.rel_w2c, np.eye(4))
    with pytest.raises(ValueError, match="uint8"):
        baselines.essential_matrix_pose(blank.astype(np.float32), blank, K)


def test_view_samples_entries_name_their_rows():
    from training.evaluate import parse_view_samples, view_method

    assert parse_view_samples("1, 8,16/4,,4/0") == [(1, 0), (8, 0), (16, 4), (4, 0)]
    assert parse_view_samples("8,8/8,8/12,1/4,1,16/4,16/4") == [(8, 0), (1, 0), (16, 4)]   # one row each
    for bad in ("", "a", "4/x", "0", "4/-1", "4/2/1"):
        with pytest.raises(ValueError, match="view-samples"):
            parse_view_samples(bad)
    assert [view_method(k, m) for k, m in ((1, 0), (1, 4), (8, 0), (8, 8), (8, 12), (16, 4))] == [
        "gst", "gst", "gst, mean of 8", "gst, mean of 8", "gst, mean of 8",
        "gst, mean of the 4 most consistent of 16"]
