"""training.view_search: exact best-of-k from order statistics (checked against enumerating every
subset), the kept mean equal to the engine's own, and the CLI on a tiny render and model."""
import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_fixtures import make_tiny_model  # noqa: E402

from training.view_search import (  # noqa: E402
    best_of_k_weights,
    expected_best_of_k,
    main,
    mean_of_most_consistent,
)


def test_best_of_k_weights_are_the_chance_of_being_a_subsets_best():
    n = 6
    for k in range(1, n + 1):
        counts = np.zeros(n)
        for subset in itertools.combinations(range(n), k):
            counts[min(subset)] += 1   # rank 0 = best: a subset's best is its lowest rank
        np.testing.assert_allclose(best_of_k_weights(n, k), counts / counts.sum(), atol=1e-12)
    np.testing.assert_allclose(best_of_k_weights(5, 1), np.full(5, 0.2))
    np.testing.assert_allclose(best_of_k_weights(5, 5), [1, 0, 0, 0, 0])
    for bad in (0, 7):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            best_of_k_weights(6, bad)


def test_expected_best_of_k_matches_every_subset_enumerated():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (3, 6)).astype(float)   # ties: the lower index wins, as argsort stable
    values = rng.normal(size=(3, 6))
    for k in (1, 2, 3, 6):
        want = []
        for s, v in zip(scores, values):
            picks = [v[min(sub, key=lambda i: (-s[i], i))] for sub in itertools.combinations(range(6), k)]
            want.append(np.mean(picks))
        np.testing.assert_allclose(expected_best_of_k(scores, values, k), want, atol=1e-12)
    # ranked by the values themselves, the best of all is each row's maximum
    np.testing.assert_allclose(expected_best_of_k(values, values, 6), values.max(1))
    with pytest.raises(ValueError, match="same"):
        expected_best_of_k(scores, values[:, :5], 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("pybullet")
    from gst_ros.cli import main as gst_main

    root = tmp_path_factory.mktemp("vs")
    data = root / "synth"
    assert gst_main(["render", "--out", str(data), "--scenes", "3", "--views", "4", "--size", "64",
                     "--test-view-fraction", "0.5", "--seed", "5", "--quiet"]) == 0
    return root, data, make_tiny_model(root / "model", seed=3)


def test_kept_mean_is_the_engines_expected_view(tiny):
    from gst_ros.engine.engine import EngineConfig, GSTEngine

    _, _, model = tiny
    engine = GSTEngine(EngineConfig(model_dir=str(model), device="cpu"))
    obs = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    w2c = np.eye(4)
    w2c[:3, 3] = [0.2, 0.0, 0.1]
    view = engine.predict_view(obs, w2c, seed=2, samples=5, keep=2)
    np.testing.assert_array_equal(
        mean_of_most_consistent(view.sample_views, view.consistency, np.arange(5), 2), view.image)
    one = mean_of_most_consistent(view.sample_views, view.consistency, np.array([3, 1]), 1)
    better = 1 if view.consistency[1] >= view.consistency[3] else 3
    np.testing.assert_array_equal(one, view.sample_views[better])


def test_cli_writes_tables_that_agree_with_its_samples(tiny, capsys):
    root, data, model = tiny
    out = root / "out"
    assert main(["--model", str(model), "--root", str(data), "--views", "2", "--scenes", "2",
                 "--samples", "4", "--k", "1,2,4,8", "--keep", "1,2", "--subsets", "2", "--device", "cpu",
                 "--out", str(out), "--no-progress"]) == 0
    samples = list(csv.DictReader(open(out / "samples.csv")))
    best = list(csv.DictReader(open(out / "best_of_k.csv")))
    kept = list(csv.DictReader(open(out / "kept_mean.csv")))
    views = {(r["scene"], r["j"]) for r in samples}
    assert len(samples) == 4 * len(views) and len(views) >= 1
    assert sorted({int(r["k"]) for r in best}) == [1, 2, 4]   # k above --samples is left out
    hit = np.mean([float(r["side@1"]) for r in samples])
    for r in best:
        if r["k"] == "1":   # the best of one is a random sample, whichever the ranking
            assert float(r["side@1"]) == pytest.approx(hit, abs=2e-4)
    psnr_max = np.mean([max(float(r["psnr"]) for r in samples if (r["scene"], r["j"]) == v) for v in views])
    oracle4 = [r for r in best if r["k"] == "4" and "oracle" in r["pick"]][0]
    assert float(oracle4["PSNR"]) == pytest.approx(psnr_max, abs=2e-4)   # the CSV keeps 4 decimals
    assert {(int(r["samples"]), int(r["keep"])) for r in kept} == {(1, 1), (2, 1), (2, 2), (4, 1), (4, 2)}
    assert "best of k" in (out / "summary.md").read_text()
    with pytest.raises(SystemExit):
        main(["--model", str(model), "--root", str(data), "--k", "x", "--out", str(out)])
    for model_dir, split, message in [(model.parent / "none", "test_views", "does not exist"),
                                      (model, "bogus", "no split 'bogus'")]:
        args = ["--model", str(model_dir), "--root", str(data), "--split", split, "--out", str(out)]
        assert main(args) == 2
        assert message in capsys.readouterr().err
