"""training.evaluate_tracking end to end on the tiny model: the simulated camera's frames replayed
with and without keyframes, per-frame rows and the summary by how far the camera turned."""
import csv

import numpy as np
import pytest
from engine_fixtures import make_tiny_model

from training import evaluate_tracking
from training.evaluate_tracking import parse_seeds, summarize


def test_parse_seeds():
    assert parse_seeds("0-2,7") == [0, 1, 2, 7] and parse_seeds("4") == [4]
    with pytest.raises(ValueError):
        parse_seeds(" , ")


def test_summarize_bins_by_turn_and_averages_seed_medians():
    frames = [(0, 1, 10.0, 2.0), (0, 2, 70.0, 20.0), (1, 1, 100.0, 40.0), (1, 2, 130.0, 10.0)]
    rows = [{"seed": s, "mode": "direct", "frame": i, "turned_deg": t, "rot_err_deg": e, "keyframe": 0}
            for s, i, t, e in frames]
    (row,) = summarize(rows)
    assert row["seeds"] == 2 and row["median_err_deg"] == pytest.approx((11.0 + 25.0) / 2)
    assert row["acc@15"] == pytest.approx(0.5) and row["chained"] == 0.0
    assert (row["n 0-60"], row["n 60-90"], row["n 90-120"], row["n 120-180"]) == (1, 1, 1, 1)
    assert row["median 90-120"] == 40.0 and row["acc@15 120-180"] == 1.0


def test_evaluate_tracking_replays_both_modes(tmp_path, capsys):
    model = make_tiny_model(tmp_path, name="track")
    out = tmp_path / "tracking"
    assert evaluate_tracking.main(["--model", str(model), "--seeds", "1", "--start", "2", "--frames", "4",
                                   "--size", "32", "--keyframe-deg", "5", "--device", "cpu",
                                   "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "per_frame.csv").open()))
    assert len(rows) == 2 * 4
    modes = {r["mode"] for r in rows}
    assert modes == {"keyframes every 5 deg", "direct"}
    for r in rows:
        assert 0.0 <= float(r["rot_err_deg"]) <= 180.0
    # both modes read the same frames: the true turn is the same frame by frame
    turned = {m: [float(r["turned_deg"]) for r in rows if r["mode"] == m] for m in modes}
    np.testing.assert_allclose(turned["direct"], turned["keyframes every 5 deg"])
    assert all(r["keyframe"] == "0" for r in rows if r["mode"] == "direct")
    assert "| keyframes every 5 deg |" in (out / "summary.md").read_text()
    assert "wrote" in capsys.readouterr().out
