"""Run the demo: a simulated camera streams to gst_node (the shipped small model), which estimates
each frame's pose against the first frame; the rotation error against the simulator's ground
truth and the latency are printed live, then a summary; then it asks the node for the view from
a camera it has seen (a goal at one of the last frames' true pose) and scores it. Writes
frames.csv, candidates.png (the candidate views the node proposed), goal_view.png (reference |
truth | expected view | most consistent sample | the view it was predicted from) and summary.txt
to --out. Needs the ROS 2 Python packages
(see docs/node.md); ROS stays on this machine (localhost discovery, private domain id)."""
from __future__ import annotations

import sys

HELP = "simulated camera -> gst_node: live pose error, latency, candidate views"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="",
                        help="GST model directory (default: the shipped models/gst_small)")
    parser.add_argument("--frames", type=int, default=30, help="stop after this many estimates")
    parser.add_argument("--rate", type=float, default=5.0, help="simulated camera rate in Hz")
    parser.add_argument("--size", type=int, default=256, help="simulated image size in pixels (square)")
    parser.add_argument("--samples", type=int, default=4, help="sampled poses per estimate")
    parser.add_argument("--candidates", type=int, default=4, help="candidate views to propose (0-16)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="scene and trajectory seed")
    parser.add_argument("--out", default="outputs/demo", help="output directory")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up when no estimate arrives for this many seconds")


def run(args) -> int:
    if args.frames < 1 or not 0 <= args.candidates <= 16 or args.samples < 1 or args.rate <= 0:
        print("gst demo: need --frames >= 1, --samples >= 1, --rate > 0 and 0 <= --candidates <= 16",
              file=sys.stderr)
        return 2
    from gst_ros.ros.demo import DemoConfig, run_demo  # imports the ROS client only now

    return run_demo(DemoConfig(model_dir=args.model, frames=args.frames, rate_hz=args.rate, size=args.size,
                               samples=args.samples, candidates=args.candidates, device=args.device,
                               seed=args.seed, out_dir=args.out, timeout_s=args.timeout))
