"""Counters of gst_node and their diagnostic_msgs/DiagnosticArray (published on /diagnostics).

One StreamStats per input stream (each camera, the reference topic, the goal topic). Counts:
- received: messages that arrived;
- rejected: bad messages (unsupported encoding, step/size mismatch, empty data, oversized image,
  a K the engine refuses, ...), per problem kind; a camera's rejected camera_info messages (NaN
  K, ...) are counted apart (camera_info_rejected), as they are not frames;
- dropped: good frames never estimated: replaced in the one-slot mailbox by a newer frame, older
  than max_frame_age_s when the worker reached them (stale), or arrived while the node had no
  reference view to estimate them against (no_reference);
- processed: frames that produced an estimate; latency (receipt -> published) and the node's own
  overhead (latency minus inference) over the last WINDOW frames.
So every frame is accounted for: received = processed + dropped + rejected + errors (+ the one
in flight).
Updated from the executor and the worker threads (poses; goal and candidate views): every method
takes the stats' lock.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WINDOW = 100   # frames in the rate / latency windows


class StreamStats:
    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped_replaced = 0
        self.dropped_stale = 0
        self.dropped_no_reference = 0
        self.rejected: Counter[str] = Counter()       # frames (or goal / reference messages)
        self.rejected_info: Counter[str] = Counter()  # camera_info messages of the stream
        self.errors = 0                 # inference / publishing failures
        self.chained = 0                # estimates chained through a keyframe (KeyframeTracker)
        self.keyframes = 0              # the camera's keyframes now
        self.last_problem = ""
        self._arrivals: deque[float] = deque(maxlen=WINDOW)
        self._latency: deque[float] = deque(maxlen=WINDOW)
        self._overhead: deque[float] = deque(maxlen=WINDOW)

    def on_received(self, now: float | None = None) -> None:
        with self._lock:
            self.received += 1
            self._arrivals.append(time.monotonic() if now is None else now)

    def on_rejected(self, kind: str, problem: str, camera_info: bool = False) -> None:
        """A rejected message of this stream; camera_info: one of its camera_info messages, not a
        frame (counted apart, so that frames add up)."""
        with self._lock:
            (self.rejected_info if camera_info else self.rejected)[kind] += 1
            self.last_problem = problem

    def on_error(self, problem: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_problem = problem

    def on_dropped(self, reason: str) -> None:
        """A good frame never estimated: "replaced" (by a newer one in the mailbox), "stale"
        (older than max_frame_age_s) or "no_reference" (no reference view to estimate it against)."""
        with self._lock:
            if reason == "stale":
                self.dropped_stale += 1
            elif reason == "no_reference":
                self.dropped_no_reference += 1
            elif reason == "replaced":
                self.dropped_replaced += 1
            else:
                raise ValueError(f"unknown drop reason {reason!r}")

    def on_processed(self, latency_s: float, overhead_s: float) -> None:
        with self._lock:
            self.processed += 1
            self._latency.append(latency_s)
            self._overhead.append(overhead_s)

    def on_tracked(self, chained: bool, keyframes: int) -> None:
        """One estimate from the camera's KeyframeTracker: whether it was chained through a
        keyframe, and how many keyframes the tracker holds now."""
        with self._lock:
            self.chained += int(chained)
            self.keyframes = keyframes

    def rate_hz(self) -> float:
        """Input rate over the last WINDOW arrivals (0 with fewer than two)."""
        with self._lock:
            a = list(self._arrivals)
        if len(a) < 2 or a[-1] <= a[0]:
            return 0.0
        return (len(a) - 1) / (a[-1] - a[0])

    def snapshot(self) -> dict:
        """Plain numbers (for diagnostics, tests and benchmarks)."""
        with self._lock:
            lat = np.array(self._latency) if self._latency else np.zeros(0)
            ovh = np.array(self._overhead) if self._overhead else np.zeros(0)
            out = {
                "received": self.received, "processed": self.processed,
                "dropped": self.dropped_replaced + self.dropped_stale + self.dropped_no_reference,
                "dropped_replaced": self.dropped_replaced, "dropped_stale": self.dropped_stale,
                "dropped_no_reference": self.dropped_no_reference,
                "rejected": sum(self.rejected.values()), "errors": self.errors,
                "camera_info_rejected": sum(self.rejected_info.values()),
                "chained": self.chained, "keyframes": self.keyframes,
                "latency_ms_mean": float(lat.mean() * 1e3) if lat.size else 0.0,
                "latency_ms_p95": float(np.percentile(lat, 95) * 1e3) if lat.size else 0.0,
                "overhead_ms_mean": float(ovh.mean() * 1e3) if ovh.size else 0.0,
                "last_problem": self.last_problem,
            }
            out.update({f"rejected_{k}": v for k, v in sorted((self.rejected + self.rejected_info).items())})
        out["input_rate_hz"] = self.rate_hz()
        return out


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, float):
        value = f"{value:.3f}"
    return KeyValue(key=key, value=str(value))


def stream_status(node_name: str, stats: StreamStats, expect_input: bool) -> DiagnosticStatus:
    """OK, or WARN when frames are rejected / fail or (for a camera) no input arrives."""
    snap = stats.snapshot()
    level, message = DiagnosticStatus.OK, "ok"
    if expect_input and snap["received"] == 0:
        level, message = DiagnosticStatus.WARN, "no input yet"
    elif snap["rejected"] or snap["camera_info_rejected"] or snap["errors"]:
        level, message = DiagnosticStatus.WARN, f"bad input or failures: {snap['last_problem']}"
    st = DiagnosticStatus(level=level, name=f"{node_name}: {stats.name}", message=message,
                          hardware_id=node_name)
    st.values = [_kv(k, v) for k, v in snap.items()]
    return st


def diagnostic_array(node_name: str, stamp, streams: list[tuple[StreamStats, bool]],
                     reference: dict) -> DiagnosticArray:
    """DiagnosticArray: one status per (stats, expect_input) stream plus the reference state
    (`reference`: {"state": "none" | "set", "source": ..., ...}); the reference status is WARN
    while no reference is set (nothing can be estimated)."""
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = [stream_status(node_name, s, e) for s, e in streams]
    ok = reference.get("state") == "set"
    ref = DiagnosticStatus(level=DiagnosticStatus.OK if ok else DiagnosticStatus.WARN,
                           name=f"{node_name}: reference",
                           message="reference set" if ok else "no reference view yet", hardware_id=node_name)
    ref.values = [_kv(k, v) for k, v in reference.items()]
    arr.status.append(ref)
    return arr
