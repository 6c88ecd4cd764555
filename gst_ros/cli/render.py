"""Render a synthetic multi-view data set from pybullet_data objects (CPU, no download).

Example:
    gst render --out data/synth --scenes 200 --views 12 --size 128 --seed 0 --objects mixed

Writes <out>/manifest.json (config + train / test_views / test_objects splits),
<out>/scenes/<scene_id>/{cameras.json, rgb/NNN.png[, depth/NNN.png, mask/NNN.png]},
<out>/render_log.csv (per-scene timings) and <out>/preview.png (a grid to look at).
The same arguments give the same files, byte for byte (render_log.csv excepted).
See docs/synthetic_data.md for the format.
"""
from __future__ import annotations

HELP = "render a synthetic multi-view data set (pybullet, CPU)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--scenes", type=int, default=10, help="number of scenes (default 10)")
    parser.add_argument("--views", type=int, default=12, help="views per scene (default 12)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels, 64..512 (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--objects", choices=("textured", "random", "mixed"), default="textured",
                        help="object set: the named catalogue, the 1000 random_urdfs, or both")
    parser.add_argument("--trajectory", choices=("sphere", "orbit"), default="sphere",
                        help="random look-at views on a sphere, or a smooth orbit per scene")
    parser.add_argument("--objects-per-scene", type=int, nargs=2, default=(1, 1), metavar=("MIN", "MAX"),
                        help="objects per scene, inclusive range (default 1 1)")
    parser.add_argument("--test-object-fraction", type=float, default=0.1,
                        help="share of objects (and of scenes) held out as unseen objects (default 0.1)")
    parser.add_argument("--test-view-fraction", type=float, default=0.2,
                        help="share of each train scene's views held out as unseen views (default 0.2)")
    parser.add_argument("--depth", action="store_true", help="also write 16-bit depth PNGs")
    parser.add_argument("--masks", action="store_true", help="also write object masks")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    import sys

    from gst_ros.sim.dataset import RenderConfig, write_dataset

    cfg = RenderConfig(scenes=args.scenes, views=args.views, size=args.size, seed=args.seed,
                       objects=args.objects, trajectory=args.trajectory,
                       objects_per_scene=tuple(args.objects_per_scene),
                       test_object_fraction=args.test_object_fraction,
                       test_view_fraction=args.test_view_fraction, depth=args.depth, masks=args.masks)
    try:
        manifest = write_dataset(args.out, cfg, workers=args.workers, overwrite=args.overwrite,
                                 progress=not args.quiet)
    except (ValueError, FileExistsError) as e:
        print(f"gst render: error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}: {len(v)} scenes" for k, v in manifest["splits"].items())
    print(f"wrote {cfg.scenes} scenes x {cfg.views} views to {args.out} ({counts}); "
          f"preview: {args.out}/preview.png")
    return 0
