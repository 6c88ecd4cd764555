"""Pack a directory tree small enough for a GPU lease's transfer limits, and restore it after.

    python -m training.lease_payload pack SRC DST [--part-mib 15]
    python -m training.lease_payload restore DST RESTORED

A device lease (docs/training.md, "A second GPU lease") limits what travels: the working tree
plus carried paths at most 64 MiB, each file that comes back at most 16 MiB. `pack` copies the
tree SRC to DST and, on the way,
- stores every float32 tensor of a GST transformer's `model.safetensors` (a model directory of
  kind "gst", gst_ros.models.io) in float16, except its frozen codebook copies (names ending in
  "codebook"), which stay as they are: half a transformer's bytes. Tokenizers are copied as
  they are: rounding their codebooks would change the codes they assign;
- stores `*.rel_w2c.npy` token-shard arrays (relative cameras, float64) as float32;
- compresses a file (zlib, fastest level) where that saves a tenth or more: token shards shrink
  ~3x, float16 weights hardly;
- splits every file larger than --part-mib into numbered parts (`NAME.part000`, ...);
and writes DST/payload.json, which records each file's original dtypes and parts. `restore`
joins the parts and casts every narrowed tensor and array back to its recorded dtype, so the
result loads wherever the original did (gst_ros.models.io, training.token_shards). Values come
back rounded once: float16 for weights (relative error <= 2^-11 in float16's normal range; a
tensor with a value float16 cannot hold, beyond 65504, stays float32), float32 for cameras.
Other files come back byte for byte. Every stored file's size and SHA-256 are recorded, so a
part cut short or left behind in a transfer is named rather than restored wrong. Both commands
write into a temporary directory beside the destination and rename it at the end, so a failure
leaves no half-written destination. Symbolic links, a file named payload.json and names that
look like parts (NAME.part000) are refused in a tree to pack.

Use: before a lease, `pack` the token shards and the model to start from into an ignored folder
that the run carries; on the device, `restore` it and train; then `pack` the trained model
directories into $OUT, and `restore` what comes back here.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

MANIFEST = "payload.json"
WEIGHTS = "model.safetensors"
KEEP_SUFFIX = "codebook"  # frozen codebook copies stay at full precision
PART = ".part"
PART_NAME = re.compile(r".*\.part\d{3,}$")


class PayloadError(ValueError):
    """A payload directory is incomplete or does not match its manifest."""


def _narrow_weights(data: bytes) -> tuple[bytes, dict]:
    """(safetensors bytes with float32 tensors in float16, {name: original dtype} of the tensors
    narrowed): all but KEEP_SUFFIX names and tensors with a finite value float16 cannot hold (it
    would become inf)."""
    state = load_tensors(data)
    narrowed = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()
                if v.dtype == torch.float32 and not k.endswith(KEEP_SUFFIX)
                and torch.equal(torch.isfinite(v.half()), torch.isfinite(v))}
    return save_tensors({k: v.half() if k in narrowed else v for k, v in state.items()}), narrowed


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _is_gst_dir(directory: Path) -> bool:
    """Whether `directory` is a model directory of kind "gst" (its config.json says so)."""
    try:
        return json.loads((directory / "config.json").read_text()).get("kind") == "gst"
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON / not UTF-8, not an object
        return False


def _digest(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_parts(out: Path, data: bytes, part_bytes: int) -> int:
    """Write `data` to `out`, or, when larger than part_bytes, to PART-numbered files of at most
    part_bytes each; returns the number of parts (0 = written whole)."""
    if len(data) <= part_bytes:
        out.write_bytes(data)
        return 0
    count = 0
    for start in range(0, len(data), part_bytes):
        out.with_name(f"{out.name}{PART}{count:03d}").write_bytes(data[start: start + part_bytes])
        count += 1
    return count


def _fresh(dst: Path) -> Path:
    """A temporary directory beside `dst` (which must not exist) to build it in."""
    if dst.exists():
        raise PayloadError(f"{dst} exists: pack and restore write a new directory")
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise PayloadError(f"{dst}: cannot create ({e})") from e
    return tmp


def _finish(tmp: Path, dst: Path, build) -> None:
    """Run build(tmp); rename tmp to dst when it succeeds, remove it when it fails (any error
    that is not a PayloadError becomes one naming its type)."""
    try:
        build(tmp)
    except PayloadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # unreadable arrays / weights, I/O errors: name them, leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise PayloadError(f"{type(e).__name__}: {e}") from e
    tmp.rename(dst)


def _files_to_pack(src: Path) -> list[Path]:
    """Every file under src, sorted; PayloadError for what pack cannot carry faithfully."""
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_symlink():
            raise PayloadError(f"{path}: a symbolic link (pack copies plain files only)")
        if path.is_dir():
            continue
        if rel.as_posix() == MANIFEST:
            raise PayloadError(f"{path}: a file named {MANIFEST} would be overwritten by the manifest")
        if PART_NAME.match(path.name):
            raise PayloadError(f"{path}: the name looks like a part of a split file ({PART}NNN)")
        files.append(path)
    return files


def pack(src, dst, part_mib: float = 15.0) -> dict:
    """Copy the tree `src` to `dst` (which must not exist) narrowed and split as the module
    docstring says; returns the manifest written to dst/payload.json."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PayloadError(f"{src}: not a directory")
    if not (math.isfinite(part_mib) and part_mib > 0):
        raise PayloadError(f"part size must be a positive number of MiB, got {part_mib}")
    part_bytes = max(1, int(part_mib * 2**20))
    paths = _files_to_pack(src)
    manifest = {"part_bytes": part_bytes, "files": {}}

    def build(tmp: Path) -> None:
        for path in paths:
            rel = path.relative_to(src)
            entry: dict = {}
            try:
                data = path.read_bytes()
                if path.name == WEIGHTS and _is_gst_dir(path.parent):
                    data, entry["tensors"] = _narrow_weights(data)
                elif path.name.endswith(".rel_w2c.npy"):
                    array = np.load(io.BytesIO(data))
                    entry["array"] = str(array.dtype)
                    data = _npy_bytes(array.astype(np.float32))
            except Exception as e:
                raise PayloadError(f"{path}: cannot pack ({type(e).__name__}: {e})") from e
            packed = zlib.compress(data, 1)  # token arrays shrink ~3x; float16 weights hardly
            if len(packed) < 0.9 * len(data):
                entry["zlib"] = True
                data = packed
            entry["stored"] = _digest(data)
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            entry["parts"] = _write_parts(out, data, part_bytes)
            manifest["files"][rel.as_posix()] = entry
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    _finish(_fresh(dst), dst, build)
    return manifest


def _join(path: Path, parts: int) -> bytes:
    chunks = []
    for i in range(parts):
        part = path.with_name(f"{path.name}{PART}{i:03d}")
        if not part.is_file():
            raise PayloadError(f"{part}: missing part {i + 1} of {parts} (was every file fetched?)")
        chunks.append(part.read_bytes())
    return b"".join(chunks)


def restore(src, dst) -> list[str]:
    """Rebuild the original tree from the payload `src` into `dst` (which must not exist): parts
    joined and checked against their recorded size and SHA-256, narrowed tensors and arrays cast
    back to their recorded dtypes. Returns the files written (relative paths). PayloadError names
    a missing or unreadable manifest, a missing file or part, and a file that does not match."""
    src, dst = Path(src), Path(dst)
    if not (src / MANIFEST).is_file():
        raise PayloadError(f"{src}: no {MANIFEST} (not a payload made by `pack`)")
    try:
        manifest = json.loads((src / MANIFEST).read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise PayloadError(f"{src / MANIFEST}: not a payload manifest ({type(e).__name__}: {e})") from e
    stored = {}
    for rel, entry in files.items():  # everything is checked before anything is written
        path = src / rel
        if entry["parts"]:
            data = _join(path, entry["parts"])
        elif path.is_file():
            data = path.read_bytes()
        else:
            raise PayloadError(f"{path}: missing (listed in {src / MANIFEST})")
        if _digest(data) != entry["stored"]:
            raise PayloadError(f"{path}: {len(data)} bytes that do not match the {entry['stored']['bytes']} "
                               "packed (a part cut short or changed in transfer?)")
        stored[rel] = zlib.decompress(data) if entry.get("zlib") else data

    def build(tmp: Path) -> None:
        for rel, entry in files.items():
            data = stored[rel]
            if "tensors" in entry:
                dtypes = {k: getattr(torch, d) for k, d in entry["tensors"].items()}
                data = save_tensors({k: v.to(dtypes[k]) if k in dtypes else v
                                     for k, v in load_tensors(data).items()})
            elif "array" in entry:
                data = _npy_bytes(np.load(io.BytesIO(data)).astype(entry["array"]))
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)

    _finish(_fresh(dst), dst, build)
    return sorted(files)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.lease_payload", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="copy a tree narrowed and split into a payload directory")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--part-mib", type=float, default=15.0, help="largest file in the payload (MiB)")
    r = sub.add_parser("restore", help="rebuild the original tree from a payload directory")
    r.add_argument("src")
    r.add_argument("dst")
    args = ap.parse_args(argv)
    try:
        if args.command == "pack":
            manifest = pack(args.src, args.dst, args.part_mib)
            size = sum(p.stat().st_size for p in Path(args.dst).rglob("*") if p.is_file())
            print(f"packed {len(manifest['files'])} files from {args.src} into {args.dst}: "
                  f"{size / 2**20:.1f} MiB")
        else:
            files = restore(args.src, args.dst)
            print(f"restored {len(files)} files into {args.dst}")
    except PayloadError as e:
        print(f"lease_payload: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
