"""The end-to-end command: render -> train tokenizers -> pre-tokenise -> train transformer -> evaluate.

    python -m training.pipeline --size quick --out outputs/pipeline_quick   # minutes on a CPU (tests, CI)
    python -m training.pipeline --size shipped --out outputs/shipped        # the shipped models/gst_small
    python -m training.pipeline --size default --out outputs/pipeline       # bigger (many CPU hours)

Steps (each skipped when its output already exists, so a re-run resumes where it stopped):
1. `gst render` a synthetic multi-view data set (pybullet) into <out>/data
   (splits train / test_views (seen objects) / test_objects (unseen objects));
2. train the image and the camera tokenizer (training/train_tokenizer.py) into <out>/tokenizers/*;
3. pre-tokenise the train and test_views splits (training/pretokenize.py) into <out>/tokens/*;
4. train the transformer (training/train_gst.py) into <out>/gst; it exports <out>/gst/model, a
   model directory the engine and the ROS node load;
5. evaluate through the engine on test_views (seen) and test_objects (unseen) with the OpenCV,
   identity and chance baselines (training/evaluate.py) into <out>/eval (results.md, CSVs, PNG grids).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class PipelineSize:
    scenes: int
    views: int
    image_size: int
    image_tokenizer: dict       # train_tokenizer config overrides (on top of image_tokenizer_config)
    camera_tokenizer: dict
    pairs_per_scene: int
    gst_config: str
    gst_overrides: dict
    eval_scenes: int
    eval_views: int
    eval_samples: int
    image_tokenizer_config: str | None = None    # YAML under training/configs (None: defaults)
    camera_tokenizer_config: str | None = None
    objects_per_scene: tuple[int, int] = (1, 1)
    test_object_fraction: float = 0.25
    test_view_fraction: float = 0.34
    render_seed: int | None = None               # None: the pipeline's --seed
    trajectory: str = "sphere"                   # gst render --trajectory: sphere | orbit
    objects: str = "mixed"                       # gst render --objects: textured | random | mixed


QUICK = PipelineSize(
    scenes=12, views=6, image_size=64,
    image_tokenizer={"preset": "image-small", "steps": 60, "batch_size": 8, "eval_every": 30,
                     "sample_every": 60, "ckpt_every": 60, "disc_weight": 0.0,
                     "model": {"resolution": 32, "ch_mult": [1, 1, 2, 2], "codebook_size": 256}},
    camera_tokenizer={"preset": "camera-small", "steps": 60, "batch_size": 16, "eval_every": 30,
                      "sample_every": 60, "ckpt_every": 60,
                      "model": {"resolution": 16, "codebook_size": 128}},
    pairs_per_scene=12, gst_config="gst_tiny_cpu.yaml",
    gst_overrides={"max_steps": 60, "batch_size": 16, "ckpt_every": 30, "log_every": 10, "warmup_steps": 5},
    eval_scenes=3, eval_views=2, eval_samples=2)

DEFAULT = PipelineSize(
    scenes=200, views=12, image_size=128,
    image_tokenizer={"preset": "image-small", "steps": 3000},
    camera_tokenizer={"preset": "camera-small", "steps": 3000},
    pairs_per_scene=32, gst_config="gst_small_cpu.yaml", gst_overrides={"max_steps": 5000},
    eval_scenes=20, eval_views=3, eval_samples=4)

# The recipe of the shipped CPU model (models/gst_small; see its model card): a robot-like camera
# orbiting two catalogue objects (the regime of the demo's simulated camera), 12 views per orbit;
# 8 of the 11 catalogue objects for training, 3 held out as unseen objects.
SHIPPED = PipelineSize(
    scenes=1600, views=12, image_size=128, objects="textured", objects_per_scene=(2, 2),
    trajectory="orbit", test_object_fraction=0.25, test_view_fraction=0.25,
    image_tokenizer_config="shipped/tokenizer_image.yaml", image_tokenizer={},
    camera_tokenizer_config="shipped/tokenizer_camera.yaml", camera_tokenizer={},
    pairs_per_scene=32, gst_config="shipped/gst.yaml", gst_overrides={},
    eval_scenes=40, eval_views=6, eval_samples=4, render_seed=11)
SIZES = {"quick": QUICK, "default": DEFAULT, "shipped": SHIPPED}

def _stage(name: str, done: bool) -> bool:
    print(f"== {name}{' (already done, skipped)' if done else ''}", file=sys.stderr, flush=True)
    return not done


def run_pipeline(out, size: PipelineSize, seed: int = 0, progress: bool = True) -> dict:
    """Run every stage into `out`; returns {"table": evaluation rows, "paths": {...}, "seconds": {...}}."""
    from gst_ros.cli import main as gst_main
    from gst_ros.models.tokenizer import CameraTokenizer, ImageTokenizer
    from training import evaluate, pretokenize, train_gst, train_tokenizer
    from training.datasets import build_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, tok, tokens, gst_dir, eval_dir = (out / d for d in ("data", "tokenizers", "tokens", "gst", "eval"))
    seconds = {}

    t = time.perf_counter()
    if _stage("1/5 render synthetic data", (data / "manifest.json").is_file()):
        rc = gst_main(["render", "--out", str(data), "--scenes", str(size.scenes), "--views", str(size.views),
                       "--size", str(size.image_size), "--objects", size.objects,
                       "--trajectory", size.trajectory,
                       "--seed", str(seed if size.render_seed is None else size.render_seed),
                       "--objects-per-scene", *(str(n) for n in size.objects_per_scene),
                       "--workers", "2", "--test-object-fraction", str(size.test_object_fraction),
                       "--test-view-fraction", str(size.test_view_fraction),
                       *([] if progress else ["--quiet"])])
        if rc != 0:
            raise RuntimeError(f"gst render failed with status {rc}")
    seconds["render"] = time.perf_counter() - t

    t = time.perf_counter()
    tok_dirs = {}
    for kind, over, yaml_name in (("image", size.image_tokenizer, size.image_tokenizer_config),
                                  ("camera", size.camera_tokenizer, size.camera_tokenizer_config)):
        d = tok / kind
        tok_dirs[kind] = d / "model"
        if _stage(f"2/5 train the {kind} tokenizer", (d / "model" / "config.json").is_file()):
            # trained on the rendered train split; held-out metrics on the reader's held-out split
            # (SyntheticDataset.held_out_split: unseen views)
            fields = {"kind": kind, "dataset": "synthetic", "data": str(data), "out": str(d), "seed": seed,
                      **over}
            yaml_path = REPO / "training" / "configs" / yaml_name if yaml_name else None
            cfg = train_tokenizer.load_config(yaml_path, **fields)
            train_tokenizer.train(cfg, resume=(d / "checkpoint.pt").is_file(), progress=progress)
    seconds["tokenizers"] = time.perf_counter() - t

    t = time.perf_counter()
    itok, ctok = ImageTokenizer.from_dir(tok_dirs["image"]), CameraTokenizer.from_dir(tok_dirs["camera"])
    for split in ("train", "test_views"):
        if _stage(f"3/5 pre-tokenise {split}", (tokens / split / "manifest.json").is_file()):
            reader = build_dataset("synthetic", data, split)
            pretokenize.pretokenize(reader, itok, ctok, tokens / split, size.pairs_per_scene, seed,
                                    metadata={"dataset": "synthetic", "root": str(data), "split": split,
                                              "image_tokenizer": str(tok_dirs["image"].resolve()),
                                              "camera_tokenizer": str(tok_dirs["camera"].resolve())},
                                    progress=progress)
    seconds["pretokenize"] = time.perf_counter() - t

    t = time.perf_counter()
    model_dir = gst_dir / train_gst.MODEL_DIR
    cfg = train_gst.load_config(REPO / "training" / "configs" / size.gst_config,
                                {"shards": str(tokens / "train"), "val_shards": str(tokens / "test_views"),
                                 "seed": seed, **size.gst_overrides})
    if _stage("4/5 train the transformer", (model_dir / "gst" / "config.json").is_file()):
        train_gst.train(cfg, gst_dir, progress=progress)
    seconds["train_gst"] = time.perf_counter() - t

    t = time.perf_counter()
    _stage("5/5 evaluate", False)
    from gst_ros.engine.engine import EngineConfig, GSTEngine

    engine = GSTEngine(EngineConfig(model_dir=str(model_dir), device="cpu", seed=seed))
    scenes = []
    for split, group in (("test_views", "seen"), ("test_objects", "unseen")):
        reader = build_dataset("synthetic", data, split)
        # a seen scene holds only its held-out views in test_views: ask for no more than the split has
        n_views = max(2, min(size.eval_views, max((len(v) for _, v, _ in reader.items), default=0)))
        found = evaluate.scenes_from_reader(reader, group, n_views, size.eval_scenes)
        if not found:
            print(f"== evaluate: no {split} scene has {n_views} views; the {group} group is empty",
                  file=sys.stderr, flush=True)
        scenes += found
    res = evaluate.evaluate_scenes(scenes, engine, samples=size.eval_samples, seed=seed, progress=progress,
                                   view_samples=((1, 0), (4, 0), (16, 4)))
    table = evaluate.write_report(res, eval_dir, title="GST pipeline evaluation")
    seconds["evaluate"] = time.perf_counter() - t
    return {"table": table, "seconds": seconds,
            "paths": {"data": str(data), "tokens": str(tokens), "model_dir": str(model_dir),
                      "eval": str(eval_dir)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (a re-run resumes finished stages)")
    ap.add_argument("--size", choices=sorted(SIZES), default="default",
                    help="quick: minutes, for tests and CI; shipped: the recipe of models/gst_small; "
                         "default: bigger")
    ap.add_argument("--quick", action="store_true", help="same as --size quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    size = QUICK if args.quick else SIZES[args.size]
    res = run_pipeline(args.out, size, args.seed, progress=not args.no_progress)
    from training.evaluate import markdown_table

    print(markdown_table(res["table"]))
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()))
    print(f"model directory: {res['paths']['model_dir']}; evaluation: {res['paths']['eval']}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
