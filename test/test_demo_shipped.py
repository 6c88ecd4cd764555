"""The README's main job on the embedded default: the simulated camera streams to gst_node with
the SHIPPED model (models/gst_small), and the demo finishes by itself with a summary, per-frame
errors, a montage of candidate views and the view predicted for a frame's true pose. A short run
(a few frames) of exactly `gst demo`."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "gst_small"


def test_shipped_model_is_complete_and_small():
    from gst_ros.engine.engine import check_model_dir, default_model_dir

    assert default_model_dir().resolve() == SHIPPED.resolve()
    check_model_dir(SHIPPED)
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total < 100 * 2**20, f"shipped model is {total / 2**20:.1f} MiB (limit 100 MiB)"
    assert (SHIPPED / "model_card.md").is_file()


def test_demo_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "gst_ros.cli", "demo", "--frames", "3", "--rate", "2", "--size", "128",
           "--candidates", "2", "--samples", "2", "--device", "cpu", "--out", str(out), "--timeout", "240"]
    proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[demo]" in proc.stdout
    rows = list(csv.DictReader((out / "frames.csv").open()))
    assert len(rows) >= 3
    errs = np.array([float(r["rot_err_deg"]) for r in rows])
    assert np.all(np.isfinite(errs)) and np.all((errs >= 0) & (errs <= 180))
    assert (out / "candidates.png").stat().st_size > 1000
    summary = (out / "summary.txt").read_text()
    assert "rot" in summary
    # "what will I see?": the node's answer to a goal at a frame's true pose, scored against that frame
    assert "goal view from a camera turned" in summary and "most consistent sample" in summary
    # and against copying the seen view the node predicted from (the reference or a keyframe)
    which = r"the reference|a keyframe|the goal's own frame, kept as a keyframe"
    assert re.search(rf"copying the view it was predicted from ([\d.]+|inf) dB \(({which})\)", summary)
    psnrs = [float(x) for x in re.findall(r"(-?[\d.]+|inf) dB", summary)]
    assert len(psnrs) == 4 and all(5.0 < p < 60.0 or p == float("inf") for p in psnrs)
    from PIL import Image

    assert Image.open(out / "goal_view.png").size == (5 * (256 + 8) + 8, 256 + 16)
