"""training.compare_eval: paired comparison of two evaluations with a bootstrap over scenes."""
import csv

import numpy as np
import pytest

from training import compare_eval


def write_pairs(path, errors_by_scene, method="gst-head", group="unseen", baseline=45.0):
    """A per_pair.csv as training.evaluate writes it: one row per ordered pair (0, j)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "per_pair.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "group", "category", "scene", "i", "j",
                                          "baseline_deg", "rot_err_deg"])
        w.writeheader()
        for scene, errors in errors_by_scene.items():
            for j, e in enumerate(errors, start=1):
                w.writerow({"method": method, "group": group, "category": "synthetic", "scene": scene,
                            "i": 0, "j": j, "baseline_deg": baseline, "rot_err_deg": e})
            # a row of another method that must be ignored
            w.writerow({"method": "identity", "group": group, "category": "synthetic", "scene": scene,
                        "i": 0, "j": 99, "baseline_deg": baseline, "rot_err_deg": 90.0})
    return path


def row(rows, threshold="15 deg", bin_="all"):
    return next(r for r in rows if r["threshold"] == threshold and r["bin"] == bin_)


def test_same_gain_in_every_scene_gives_a_tight_interval(tmp_path):
    # A: 1 of 4 pairs within 15 deg in every scene; B: 3 of 4. Every scene gains 0.5.
    a = write_pairs(tmp_path / "a", {f"{s:03d}": [5, 20, 40, 80] for s in range(10)})
    b = write_pairs(tmp_path / "b", {f"{s:03d}": [5, 10, 12, 80] for s in range(10)})
    rows = compare_eval.compare(compare_eval.load_pair_errors(a, "gst-head"),
                                compare_eval.load_pair_errors(b, "gst-head"), resamples=500)
    r = row(rows)
    assert (r["pairs"], r["scenes"]) == (40, 10)
    assert r["RRA A"] == pytest.approx(0.25) and r["RRA B"] == pytest.approx(0.75)
    assert r["B - A"] == pytest.approx(0.5)
    assert r["95% low"] == pytest.approx(0.5) and r["95% high"] == pytest.approx(0.5)
    assert r["P(B - A <= 0)"] == 0.0
    r30 = row(rows, "30 deg")                    # at 30 deg: 2 of 4 vs 3 of 4
    assert r30["B - A"] == pytest.approx(0.25)
    assert [x["bin"] for x in rows if x["threshold"] == "15 deg"] == ["all", "30-60"]  # empty bins left out


def test_gain_in_one_scene_of_many_is_not_significant(tmp_path):
    base = {f"{s:03d}": [5, 20, 40, 80] for s in range(20)}
    better = dict(base, **{"007": [5, 5, 5, 5]})
    a = compare_eval.load_pair_errors(write_pairs(tmp_path / "a", base), "gst-head")
    b = compare_eval.load_pair_errors(write_pairs(tmp_path / "b", better), "gst-head")
    rows = compare_eval.compare(a, b, resamples=2000, seed=1)
    r = row(rows)
    assert r["B - A"] == pytest.approx(0.75 / 20)
    assert r["95% low"] == 0.0                   # a third of the draws miss scene 007 altogether
    assert 0.25 < r["P(B - A <= 0)"] < 0.45      # P(scene 007 not drawn) = (19/20)^20 = 0.358


def test_bootstrap_is_paired_and_category_averaged():
    # two categories of unequal size: the accuracy is the mean of the per-category accuracies
    scenes = np.array(["s0", "s0", "s1", "s1", "s1", "s1"])
    cats = np.array(["car", "car", "cup", "cup", "cup", "cup"])
    hits_a = np.array([1, 0, 0, 0, 0, 0])
    hits_b = np.array([1, 1, 1, 0, 0, 0])
    point, boot = compare_eval.paired_bootstrap(scenes, cats, hits_a, hits_b, resamples=300)
    assert point == pytest.approx((1.0 + 0.25) / 2 - (0.5 + 0.0) / 2)
    # a draw of s0 twice has only the category car: 1.0 - 0.5; of s1 twice only cup: 0.25 - 0
    assert set(np.round(boot, 6)) <= {round(point, 6), 0.5, 0.25}


def test_mismatched_or_missing_runs_are_named(tmp_path):
    a = write_pairs(tmp_path / "a", {"000": [5, 20], "001": [5, 20]})
    b = write_pairs(tmp_path / "b", {"000": [5, 20]})
    with pytest.raises(compare_eval.EvalComparisonError, match="2 of A's missing in B"):
        compare_eval.compare(compare_eval.load_pair_errors(a, "gst-head"),
                             compare_eval.load_pair_errors(b, "gst-head"))
    with pytest.raises(compare_eval.EvalComparisonError, match="no pairs of method 'gst'"):
        compare_eval.load_pair_errors(a, "gst")
    with pytest.raises(compare_eval.EvalComparisonError, match="no per_pair.csv"):
        compare_eval.load_pair_errors(tmp_path / "nowhere", "gst-head")
    assert compare_eval.main([str(a), str(b)]) == 2


def test_cli_writes_the_table(tmp_path, capsys):
    a = write_pairs(tmp_path / "a", {f"{s}": [5, 20] for s in range(5)})
    b = write_pairs(tmp_path / "b", {f"{s}": [5, 10] for s in range(5)})
    assert compare_eval.main([str(a), str(b / "per_pair.csv"), "--resamples", "200",
                              "--out", str(tmp_path / "diff.csv")]) == 0
    assert "| unseen | 15 deg | all | 10 | 5 | 0.500 | 1.000 | 0.500 |" in capsys.readouterr().out
    with open(tmp_path / "diff.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["B - A"]) == pytest.approx(0.5)


def write_views(path, psnr_by_scene, hits=0.0, group="seen", method="gst"):
    """An nvs.csv as training.evaluate writes it: one row per target view j of each scene, and a
    'chance' row per view without PSNR / SSIM (as evaluate writes them)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "nvs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "group", "category", "scene", "j", "psnr", "ssim",
                                          "side@1", "side_err_deg"])
        w.writeheader()
        for scene, values in psnr_by_scene.items():
            for j, v in enumerate(values, start=1):
                w.writerow({"method": method, "group": group, "category": "synthetic", "scene": scene, "j": j,
                            "psnr": v, "ssim": v / 100, "side@1": hits, "side_err_deg": 60 - 60 * hits})
                w.writerow({"method": "chance", "group": group, "category": "synthetic", "scene": scene,
                            "j": j, "psnr": "", "ssim": "", "side@1": 1 / 12, "side_err_deg": 90})
    return path


def test_views_compared_view_by_view_with_the_scene_bootstrap(tmp_path):
    a = write_views(tmp_path / "a", {f"{s:03d}": [12.0, 14.0] for s in range(10)})
    b = write_views(tmp_path / "b", {f"{s:03d}": [13.0, 15.0] for s in range(10)}, hits=1.0)
    rows = compare_eval.compare_views(compare_eval.load_view_scores(a, "gst"),
                                      compare_eval.load_view_scores(b / "nvs.csv", "gst"), resamples=300)
    by = {r["metric"]: r for r in rows}
    assert set(by) == {"side@1", "side_err_deg", "psnr", "ssim"}
    assert (by["psnr"]["views"], by["psnr"]["scenes"]) == (20, 10)
    assert by["psnr"]["A"] == pytest.approx(13.0) and by["psnr"]["B"] == pytest.approx(14.0)
    assert by["psnr"]["95% low"] == pytest.approx(1.0) and by["psnr"]["95% high"] == pytest.approx(1.0)
    assert by["side@1"]["B - A"] == pytest.approx(1.0) and by["side_err_deg"]["B - A"] == pytest.approx(-60.0)
    assert by["psnr"]["P(B - A <= 0)"] == 0.0 and by["side_err_deg"]["P(B - A <= 0)"] == 1.0
    # a gain in one scene of many is not resolved
    c = write_views(tmp_path / "c", {f"{s:03d}": [12.0, 14.0] if s else [22.0, 24.0] for s in range(10)})
    r = next(x for x in compare_eval.compare_views(compare_eval.load_view_scores(a, "gst"),
                                                   compare_eval.load_view_scores(c, "gst"), resamples=2000)
             if x["metric"] == "psnr")
    assert r["B - A"] == pytest.approx(1.0) and r["95% low"] == 0.0
    # a method whose rows carry no PSNR is compared on what it has
    chance = compare_eval.compare_views(compare_eval.load_view_scores(a, "chance"),
                                        compare_eval.load_view_scores(b, "chance"), resamples=100)
    assert [x["metric"] for x in chance] == ["side@1", "side_err_deg"]


def test_views_missing_or_mismatched_are_named(tmp_path, capsys):
    a = write_views(tmp_path / "a", {"000": [12.0, 14.0], "001": [12.0, 14.0]})
    b = write_views(tmp_path / "b", {"000": [12.0, 14.0]})
    with pytest.raises(compare_eval.EvalComparisonError, match="2 of A's missing in B"):
        compare_eval.compare_views(compare_eval.load_view_scores(a, "gst"),
                                   compare_eval.load_view_scores(b, "gst"))
    with pytest.raises(compare_eval.EvalComparisonError,
                       match=r"no views of method 'gst, mean of 4' \(it has"):
        compare_eval.load_view_scores(a, "gst, mean of 4")
    with pytest.raises(compare_eval.EvalComparisonError, match="no nvs.csv"):
        compare_eval.load_view_scores(tmp_path / "nowhere", "gst")
    assert compare_eval.main([str(a), str(b), "--views"]) == 2
    assert compare_eval.main([str(a), str(a), "--views", "--resamples", "100"]) == 0
    assert "| seen | psnr | 4 | 2 | 13.000 | 13.000 | 0.000 |" in capsys.readouterr().out
