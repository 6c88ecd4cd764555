"""COLMAP sparse model reader: cameras, images and points3D, text and binary formats.

A model directory (e.g. `sparse/0`) holds either `cameras.bin`, `images.bin`, `points3D.bin`
or the `.txt` versions. Both formats carry the same content:

- cameras: CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[] (the number of params depends on MODEL);
- images:  IMAGE_ID, QW QX QY QZ, TX TY TZ, CAMERA_ID, NAME, then the 2D points
           (X, Y, POINT3D_ID; POINT3D_ID = -1 when the point has no 3D track);
- points3D: POINT3D_ID, X Y Z, R G B, ERROR, TRACK[] of (IMAGE_ID, POINT2D_IDX).

Binary layout (little-endian): cameras = u64 count, then per camera i32 id, i32 model id,
u64 width, u64 height, f64 params[n]; images = u64 count, then per image i32 id, f64 qvec[4],
f64 tvec[3], i32 camera id, NUL-terminated name, u64 n_points2D, then (f64 x, f64 y, i64 id) each;
points3D = u64 count, then per point u64 id, f64 xyz[3], u8 rgb[3], f64 error, u64 track
length, then (i32 image id, i32 point2D idx) each.

Conventions: an image's (qvec, tvec) is its world-to-camera pose in OpenCV axes (x right,
y down, z forward), quaternion in (w, x, y, z) order; converted to a 4x4 w2c by
gst_ros.geometry. COLMAP puts the centre of the top-left pixel at (0.5, 0.5); `camera_K`
returns K in the project's convention (top-left pixel centre at (0, 0)) via gst_ros.geometry.
Lens distortion parameters (SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV) are read but IGNORED
by `camera_K`: images are treated as pinhole. Fisheye models are rejected by `camera_K`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gst_ros.geometry import intrinsics_from_normalized, w2c_from_colmap


class ColmapFormatError(ValueError):
    """A COLMAP model file is missing, truncated or malformed."""


# model id -> (name, number of params); COLMAP's fixed numbering
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
CAMERA_MODEL_IDS = {name: (mid, n) for mid, (name, n) in CAMERA_MODELS.items()}
# pinhole-family models: param layout -> (fx, fy, cx, cy) indices; distortion params follow
_PINHOLE_LAYOUT = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2),
    "PINHOLE": (0, 1, 2, 3),
    "SIMPLE_RADIAL": (0, 0, 1, 2),
    "RADIAL": (0, 0, 1, 2),
    "OPENCV": (0, 1, 2, 3),
    "FULL_OPENCV": (0, 1, 2, 3),
}


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # (n,) float64, COLMAP's order for `model`


@dataclass
class ColmapImage:
    image_id: int
    qvec: np.ndarray  # (4,) w, x, y, z: world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (n, 2) pixels, COLMAP convention
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (n,), -1 = none


@dataclass
class ColmapPoint3D:
    point3D_id: int
    xyz: np.ndarray  # (3,) world frame
    rgb: np.ndarray  # (3,) uint8
    error: float
    image_ids: np.ndarray  # (k,) int
    point2D_idxs: np.ndarray  # (k,) int


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points3D: dict[int, ColmapPoint3D]


# ----------------------------------------------------------------------------- text format


def _text_lines(path: Path):
    """(line number, stripped line) for the non-empty, non-comment lines of a COLMAP .txt file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ColmapFormatError(f"{path}: cannot read ({e})") from e
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield i, s


def _check_model(path: Path, lineno, model: str, n_params: int) -> None:
    if model not in CAMERA_MODEL_IDS:
        raise ColmapFormatError(f"{path}:{lineno}: unknown camera model {model!r}")
    want = CAMERA_MODEL_IDS[model][1]
    if n_params != want:
        raise ColmapFormatError(f"{path}:{lineno}: camera model {model} needs {want} params, got {n_params}")


def read_cameras_text(path) -> dict[int, ColmapCamera]:
    """cameras.txt -> {camera_id: ColmapCamera}."""
    path = Path(path)
    cams = {}
    for i, s in _text_lines(path):
        tok = s.split()
        try:
            cid, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(x) for x in tok[4:]], dtype=np.float64)
        except (IndexError, ValueError) as e:
            raise ColmapFormatError(f"{path}:{i}: malformed camera line ({e})") from e
        _check_model(path, i, model, len(params))
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def read_images_text(path) -> dict[int, ColmapImage]:
    """images.txt (two lines per image; the second, the 2D points, may be empty) ->
    {image_id: ColmapImage}."""
    path = Path(path)
    try:
        raw = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ColmapFormatError(f"{path}: cannot read ({e})") from e
    lines = [(i, s) for i, s in enumerate(raw, 1) if not s.lstrip().startswith("#")]
    # drop trailing blank lines, keep blank 2D-point lines in the middle
    while lines and not lines[-1][1].strip():
        lines.pop()
    # leading blank lines (before the first image) carry nothing
    while lines and not lines[0][1].strip():
        lines.pop(0)
    images = {}
    k = 0
    while k < len(lines):
        i, head = lines[k]
        pts = lines[k + 1][1] if k + 1 < len(lines) else ""
        k += 2
        tok = head.split()
        try:
            iid = int(tok[0])
            q = np.array([float(x) for x in tok[1:5]])
            t = np.array([float(x) for x in tok[5:8]])
            cid = int(tok[8])
            name = " ".join(head.split(None, 9)[9:]) if len(tok) > 9 else ""
        except (IndexError, ValueError) as e:
            raise ColmapFormatError(f"{path}:{i}: malformed image line ({e})") from e
        if len(q) != 4 or len(t) != 3 or not name:
            raise ColmapFormatError(f"{path}:{i}: image line needs ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        ptok = pts.split()
        j = lines[k - 1][0] if k - 1 < len(lines) else i + 1   # the points line's own line number
        two_lines = (f" (the line after image {iid}'s must be its 2D points, or empty: images.txt holds two "
                     f"lines per image)")
        if len(ptok) % 3:
            raise ColmapFormatError(f"{path}:{j}: 2D point line must hold triples X Y POINT3D_ID" + two_lines)
        try:
            arr = np.array([float(x) for x in ptok], dtype=np.float64).reshape(-1, 3)
        except ValueError as e:
            raise ColmapFormatError(f"{path}:{j}: malformed 2D points ({e})" + two_lines) from e
        images[iid] = ColmapImage(iid, q, t, cid, name, arr[:, :2].copy(), arr[:, 2].astype(np.int64))
    return images


def read_points3D_text(path) -> dict[int, ColmapPoint3D]:
    """points3D.txt -> {point3D_id: ColmapPoint3D}."""
    path = Path(path)
    pts = {}
    for i, s in _text_lines(path):
        tok = s.split()
        try:
            pid = int(tok[0])
            xyz = np.array([float(x) for x in tok[1:4]])
            rgb = np.array([int(x) for x in tok[4:7]], dtype=np.uint8)
            err = float(tok[7])
            track = np.array([int(x) for x in tok[8:]], dtype=np.int64)
        except (IndexError, ValueError, OverflowError) as e:
            raise ColmapFormatError(f"{path}:{i}: malformed point line ({e})") from e
        if len(xyz) != 3 or len(rgb) != 3 or len(track) % 2:
            raise ColmapFormatError(f"{path}:{i}: point line needs ID X Y Z R G B ERROR "
                                    "(IMAGE_ID POINT2D_IDX)*")
        pts[pid] = ColmapPoint3D(pid, xyz, rgb, err, track[0::2].copy(), track[1::2].copy())
    return pts


# --------------------------------------------------------------------------- binary format


class _Reader:
    """Little-endian struct reader over a bytes buffer that reports truncation by file name."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as e:
            raise ColmapFormatError(f"{path}: cannot read ({e})") from e
        self.pos = 0

    def take(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.buf):
            raise ColmapFormatError(f"{self.path}: truncated at byte {self.pos} (needed {n} more bytes)")
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        n = np.dtype(dtype).itemsize * count
        if count < 0 or self.pos + n > len(self.buf):
            raise ColmapFormatError(f"{self.path}: truncated at byte {self.pos} (needed {n} more bytes)")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += n
        return out

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise ColmapFormatError(f"{self.path}: truncated image name at byte {self.pos}")
        s = self.buf[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s


def read_cameras_binary(path) -> dict[int, ColmapCamera]:
    """cameras.bin -> {camera_id: ColmapCamera}."""
    r = _Reader(Path(path))
    (n,) = r.take("Q")
    cams = {}
    for _ in range(n):
        cid, mid, w, h = r.take("iiQQ")
        if mid not in CAMERA_MODELS:
            raise ColmapFormatError(f"{path}: camera {cid} has unknown model id {mid}")
        name, n_params = CAMERA_MODELS[mid]
        params = np.array(r.take("d" * n_params), dtype=np.float64)
        cams[cid] = ColmapCamera(cid, name, w, h, params)
    return cams


_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
_TRACK_DTYPE = np.dtype([("image_id", "<i4"), ("point2D_idx", "<i4")])


def read_images_binary(path) -> dict[int, ColmapImage]:
    """images.bin -> {image_id: ColmapImage}."""
    r = _Reader(Path(path))
    (n,) = r.take("Q")
    images = {}
    for _ in range(n):
        vals = r.take("idddddddi")
        iid, q, t, cid = vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8]
        name = r.cstring()
        (n_pts,) = r.take("Q")
        pts = r.array(_POINT2D_DTYPE, n_pts)
        xys = np.stack([pts["x"], pts["y"]], axis=-1).astype(np.float64)
        images[iid] = ColmapImage(iid, q, t, cid, name, xys, pts["id"].astype(np.int64))
    return images


def read_points3D_binary(path) -> dict[int, ColmapPoint3D]:
    """points3D.bin -> {point3D_id: ColmapPoint3D}."""
    r = _Reader(Path(path))
    (n,) = r.take("Q")
    pts = {}
    for _ in range(n):
        vals = r.take("QdddBBBd")
        pid = vals[0]
        (track_len,) = r.take("Q")
        track = r.array(_TRACK_DTYPE, track_len)
        pts[pid] = ColmapPoint3D(pid, np.array(vals[1:4]), np.array(vals[4:7], dtype=np.uint8),
                                 float(vals[7]), track["image_id"].astype(np.int64),
                                 track["point2D_idx"].astype(np.int64))
    return pts


# ------------------------------------------------------------------------------- the model


def detect_format(model_dir) -> str:
    """'bin' or 'txt': which complete set of cameras/images files `model_dir` holds (binary
    preferred when both exist). Raises ColmapFormatError when neither is complete."""
    d = Path(model_dir)
    for ext in ("bin", "txt"):
        if (d / f"cameras.{ext}").is_file() and (d / f"images.{ext}").is_file():
            return ext
    raise ColmapFormatError(f"{d}: no COLMAP model (needs cameras.bin + images.bin "
                            "or cameras.txt + images.txt)")


def read_model(model_dir, ext: str | None = None, with_points3D: bool = True) -> ColmapModel:
    """Read a COLMAP sparse model directory. `ext` is 'bin' or 'txt' (None: detect). points3D is
    optional on disk (empty dict when absent) and skipped entirely with with_points3D=False."""
    d = Path(model_dir)
    ext = ext or detect_format(d)
    if ext not in ("bin", "txt"):
        raise ValueError(f"read_model: ext must be 'bin' or 'txt', got {ext!r}")
    if ext == "bin":
        cams, imgs = read_cameras_binary(d / "cameras.bin"), read_images_binary(d / "images.bin")
    else:
        cams, imgs = read_cameras_text(d / "cameras.txt"), read_images_text(d / "images.txt")
    pts = {}
    pfile = d / f"points3D.{ext}"
    if with_points3D and pfile.is_file():
        pts = read_points3D_binary(pfile) if ext == "bin" else read_points3D_text(pfile)
    for im in imgs.values():
        if im.camera_id not in cams:
            raise ColmapFormatError(f"{d}: image {im.image_id} ({im.name}) refers to missing "
                                    f"camera {im.camera_id}")
    return ColmapModel(cams, imgs, pts)


def camera_K(camera: ColmapCamera) -> np.ndarray:
    """(3, 3) pixel K of a COLMAP camera in the project's convention (OpenCV / ROS CameraInfo,
    top-left pixel centre at (0, 0); COLMAP's own principal point is 0.5 px larger). Distortion
    parameters are ignored (pinhole approximation). Raises ColmapFormatError for fisheye/FOV
    models, which a pinhole K cannot describe."""
    if camera.model not in _PINHOLE_LAYOUT:
        raise ColmapFormatError(f"camera {camera.camera_id}: model {camera.model} is not supported "
                                f"(pinhole-family models only: {sorted(_PINHOLE_LAYOUT)})")
    ifx, ify, icx, icy = _PINHOLE_LAYOUT[camera.model]
    p, w, h = camera.params, camera.width, camera.height
    # COLMAP measures pixels from the image's top-left CORNER, as normalised intrinsics do:
    # intrinsics_from_normalized applies the corner -> pixel-centre shift (-0.5 px).
    return intrinsics_from_normalized(p[ifx] / w, p[ify] / h, p[icx] / w, p[icy] / h, w, h)


def image_w2c(image: ColmapImage) -> np.ndarray:
    """(4, 4) float64 world-to-camera matrix (OpenCV axes) of a COLMAP image."""
    return w2c_from_colmap(image.qvec, image.tvec)
