"""COLMAP sparse model reader: text and binary fixtures written here in COLMAP's true on-disk
formats from known cameras; both formats must read identically and give the expected K / w2c."""
import struct

import numpy as np
import pytest
from transforms3d.quaternions import mat2quat

from training.datasets.colmap import (
    ColmapFormatError,
    camera_K,
    detect_format,
    image_w2c,
    read_model,
)

MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
             "OPENCV_FISHEYE": 5}

# camera id -> (model, width, height, params); expected (fx, fy, cx, cy) in COLMAP's convention
CAMERAS = {
    1: ("SIMPLE_PINHOLE", 64, 48, [50.0, 32.0, 24.0]),
    2: ("PINHOLE", 64, 48, [50.0, 55.0, 31.0, 25.0]),
    3: ("SIMPLE_RADIAL", 64, 48, [52.0, 32.5, 23.5, -0.02]),
    4: ("RADIAL", 64, 48, [53.0, 30.0, 22.0, 0.01, -0.003]),
    7: ("OPENCV", 80, 60, [60.0, 61.0, 40.0, 30.0, 0.1, -0.01, 0.001, 0.002]),
}
EXPECTED_FXFYCXCY = {1: (50, 50, 32, 24), 2: (50, 55, 31, 25), 3: (52, 52, 32.5, 23.5), 4: (53, 53, 30, 22),
                     7: (60, 61, 40, 30)}


def camera_on_plus_x():
    """Known camera: centre (2, 0, 0) looking at the origin, image up = world +z.
    OpenCV axes in world coordinates: right = +y, down = -z, forward = -x."""
    R = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    t = -R @ np.array([2.0, 0.0, 0.0])
    return R, t


def camera_on_minus_y():
    """Centre (0, -3, 1) looking along +y (right = +x, down = -z, forward = +y)."""
    R = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return R, -R @ np.array([0.0, -3.0, 1.0])


def make_images():
    """image id -> (qvec wxyz, tvec, camera id, name, points2D [(x, y, id)])"""
    R1, t1 = camera_on_plus_x()
    R2, t2 = camera_on_minus_y()
    return {
        5: (mat2quat(R1), t1, 2, "frame_a.jpg", [(10.5, 20.25, 1), (30.0, 40.0, -1)]),
        9: (mat2quat(R2), t2, 7, "frame_b.jpg", []),
    }


POINTS = {1: ([0.1, 0.2, 0.3], [255, 0, 10], 0.5, [(5, 0), (9, 3)]),
          4: ([1.0, -1.0, 0.5], [1, 2, 3], 1.25, [])}


def write_text_model(d, cameras=CAMERAS, images=None, points=POINTS):
    images = make_images() if images is None else images
    d.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    for cid, (model, w, h, params) in cameras.items():
        lines.append(" ".join([str(cid), model, str(w), str(h)] + [repr(float(p)) for p in params]))
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for iid, (q, t, cid, name, pts) in images.items():
        lines.append(" ".join([str(iid)] + [repr(float(x)) for x in (*q, *t)] + [str(cid), name]))
        lines.append(" ".join(f"{x!r} {y!r} {p}" for x, y, p in pts))
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:"]
    for pid, (xyz, rgb, err, track) in points.items():
        lines.append(" ".join([str(pid)] + [repr(float(x)) for x in xyz] + [str(c) for c in rgb] + [repr(err)]
                              + [f"{i} {j}" for i, j in track]))
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def write_binary_model(d, cameras=CAMERAS, images=None, points=POINTS):
    images = make_images() if images is None else images
    d.mkdir(parents=True, exist_ok=True)
    b = struct.pack("<Q", len(cameras))
    for cid, (model, w, h, params) in cameras.items():
        b += struct.pack("<iiQQ", cid, MODEL_IDS[model], w, h) + struct.pack(f"<{len(params)}d", *params)
    (d / "cameras.bin").write_bytes(b)
    b = struct.pack("<Q", len(images))
    for iid, (q, t, cid, name, pts) in images.items():
        b += struct.pack("<idddddddi", iid, *q, *t, cid) + name.encode() + b"\x00"
        b += struct.pack("<Q", len(pts)) + b"".join(struct.pack("<ddq", x, y, p) for x, y, p in pts)
    (d / "images.bin").write_bytes(b)
    b = struct.pack("<Q", len(points))
    for pid, (xyz, rgb, err, track) in points.items():
        b += struct.pack("<QdddBBBd", pid, *xyz, *rgb, err) + struct.pack("<Q", len(track))
        b += b"".join(struct.pack("<ii", i, j) for i, j in track)
    (d / "points3D.bin").write_bytes(b)


@pytest.fixture
def models(tmp_path):
    write_text_model(tmp_path / "txt")
    write_binary_model(tmp_path / "bin")
    return tmp_path / "txt", tmp_path / "bin"


def test_text_and_binary_identical(models):
    txt, bin_ = models
    assert detect_format(txt) == "txt" and detect_format(bin_) == "bin"
    a, b = read_model(txt), read_model(bin_)
    assert sorted(a.cameras) == sorted(b.cameras) == sorted(CAMERAS)
    for cid in CAMERAS:
        ca, cb = a.cameras[cid], b.cameras[cid]
        assert (ca.model, ca.width, ca.height) == (cb.model, cb.width, cb.height) == CAMERAS[cid][:3]
        np.testing.assert_array_equal(ca.params, cb.params)
        np.testing.assert_array_equal(camera_K(ca), camera_K(cb))
    assert sorted(a.images) == sorted(b.images) == [5, 9]
    for iid in a.images:
        ia, ib = a.images[iid], b.images[iid]
        assert ia.name == ib.name and ia.camera_id == ib.camera_id
        np.testing.assert_array_equal(ia.qvec, ib.qvec)
        np.testing.assert_array_equal(ia.tvec, ib.tvec)
        np.testing.assert_array_equal(ia.xys, ib.xys)
        np.testing.assert_array_equal(ia.point3D_ids, ib.point3D_ids)
        np.testing.assert_array_equal(image_w2c(ia), image_w2c(ib))
    assert a.images[5].xys.tolist() == [[10.5, 20.25], [30.0, 40.0]]
    assert a.images[5].point3D_ids.tolist() == [1, -1]
    assert len(a.images[9].xys) == 0
    assert sorted(a.points3D) == sorted(b.points3D) == [1, 4]
    for pid in a.points3D:
        pa, pb = a.points3D[pid], b.points3D[pid]
        np.testing.assert_array_equal(pa.xyz, pb.xyz)
        np.testing.assert_array_equal(pa.rgb, pb.rgb)
        assert pa.error == pb.error == POINTS[pid][2]
        np.testing.assert_array_equal(pa.image_ids, pb.image_ids)
        np.testing.assert_array_equal(pa.point2D_idxs, pb.point2D_idxs)
    assert a.points3D[1].image_ids.tolist() == [5, 9] and a.points3D[1].point2D_idxs.tolist() == [0, 3]


@pytest.mark.parametrize("fmt", ["txt", "bin"])
def test_known_cameras(models, fmt):
    m = read_model(models[0] if fmt == "txt" else models[1])
    for cid, (fx, fy, cx, cy) in EXPECTED_FXFYCXCY.items():
        # COLMAP's principal point is measured from the image corner: ours is 0.5 px less
        expected = [[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]]
        np.testing.assert_allclose(camera_K(m.cameras[cid]), expected, atol=1e-9)
    w2c = image_w2c(m.images[5])
    R, t = camera_on_plus_x()
    np.testing.assert_allclose(w2c[:3, :3], R, atol=1e-12)
    np.testing.assert_allclose(w2c[:3, 3], [0.0, 0.0, 2.0], atol=1e-12)
    # the origin is 2 units in front of this camera
    np.testing.assert_allclose(w2c @ [0, 0, 0, 1], [0, 0, 2, 1], atol=1e-12)
    R2, t2 = camera_on_minus_y()
    np.testing.assert_allclose(image_w2c(m.images[9])[:3], np.c_[R2, t2], atol=1e-12)


def test_fisheye_camera_rejected_by_camera_K(tmp_path):
    cams = {1: ("OPENCV_FISHEYE", 64, 48, [50.0, 50.0, 32.0, 24.0, 0.1, 0.0, 0.0, 0.0])}
    write_binary_model(tmp_path, cameras=cams, images={}, points={})
    m = read_model(tmp_path)
    assert m.cameras[1].model == "OPENCV_FISHEYE"
    with pytest.raises(ColmapFormatError, match="OPENCV_FISHEYE"):
        camera_K(m.cameras[1])


def test_corrupt_models_raise_clear_errors(models, tmp_path):
    txt, bin_ = models
    data = (bin_ / "images.bin").read_bytes()
    (bin_ / "images.bin").write_bytes(data[:70])
    with pytest.raises(ColmapFormatError, match="images.bin: truncated"):
        read_model(bin_)
    text = (txt / "cameras.txt").read_text().replace("PINHOLE 64 48 50.0 55.0", "PINHOLE 64 48 50.0")
    (txt / "cameras.txt").write_text(text)
    with pytest.raises(ColmapFormatError, match="PINHOLE needs 4 params"):
        read_model(txt)
    write_text_model(tmp_path / "badq", images={1: ([1.0, 0, 0], [0, 0, 0], 1, "", [])})
    with pytest.raises(ColmapFormatError, match="images.txt"):
        read_model(tmp_path / "badq")
    with pytest.raises(ColmapFormatError, match="no COLMAP model"):
        read_model(tmp_path / "nothing_here")
    # an images.txt written without the 2D-points line of each image: the error names the line
    # that should have held image 1's points (after a comment) and says what the format asks
    write_text_model(tmp_path / "onelines", images={1: ([1.0, 0, 0, 0], [0, 0, 0], 1, "a.png", [])})
    (tmp_path / "onelines" / "images.txt").write_text(
        "# one line per image\n1 1 0 0 0 0 0 0 1 a.png\n# b\n2 1 0 0 0 0 0 0 1 b.png\n")
    with pytest.raises(ColmapFormatError, match=r"images.txt:4: 2D point line must hold triples .*\(the line "
                                                r"after image 1's must be its 2D points, or empty"):
        read_model(tmp_path / "onelines")
    write_binary_model(tmp_path / "orphan", images={1: ([1.0, 0, 0, 0], [0, 0, 0], 99, "x.jpg", [])})
    with pytest.raises(ColmapFormatError, match="missing camera 99"):
        read_model(tmp_path / "orphan")
