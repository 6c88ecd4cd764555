"""The latest-item worker: inference runs on one thread, off the ROS executor.

Every input stream (a camera, the goal topic, the candidate refresh) owns a one-slot mailbox
keyed by a name. Putting an item into a full slot replaces the waiting item, which is counted
as dropped: the worker always works on the newest item and no queue can grow. Keys are served
round-robin so one busy camera cannot starve the others. The handler's exceptions are passed
to `on_error` and never stop the thread.

Plain Python threading: no ROS, so this is tested without rclpy.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class LatestItemWorker:
    """One worker thread serving one-slot mailboxes round-robin.

    handler(key, item) runs on the worker thread for every item that was not replaced first;
    on_error(key, item, exc) is called when the handler raises (default: ignore).
    """

    def __init__(self, handler: Callable[[Hashable, Any], None],
                 on_error: Callable[[Hashable, Any, BaseException], None] | None = None,
                 name: str = "gst_worker"):
        self._handler = handler
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._slots: dict[Hashable, Any] = {}   # key -> waiting item (insertion order = service order)
        self._order: list[Hashable] = []        # every key ever seen, in first-seen order
        self._next = 0                          # round-robin position in _order
        self._dropped: dict[Hashable, int] = {}
        self._handled: dict[Hashable, int] = {}
        self._busy_key: Hashable | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                raise RuntimeError(f"worker {self._name!r} already started")
            self._stop = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after the item being handled (waiting items are discarded, not
        counted) without waiting for it: several workers can be asked first, then joined."""
        with self._cond:
            self._stop = True
            self._slots.clear()
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> bool:
        """request_stop, then wait for the thread. Returns False if it did not end within
        `timeout` seconds."""
        self.request_stop()
        with self._cond:
            thread, self._thread = self._thread, None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def name(self) -> str:
        return self._name

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    # -- producer side ---------------------------------------------------------------------
    def put(self, key: Hashable, item: Any) -> bool:
        """Place `item` in `key`'s slot. Returns True when it replaced an item that had not been
        handled yet (that item is dropped and counted)."""
        with self._cond:
            if key not in self._dropped:
                self._order.append(key)
                self._dropped[key] = 0
                self._handled[key] = 0
            replaced = key in self._slots
            if replaced:
                self._dropped[key] += 1
            self._slots[key] = item
            self._cond.notify()
            return replaced

    def dropped(self, key: Hashable) -> int:
        """Items of `key` replaced before the worker reached them."""
        with self._cond:
            return self._dropped.get(key, 0)

    def handled(self, key: Hashable) -> int:
        with self._cond:
            return self._handled.get(key, 0)

    def pending(self) -> int:
        """Items waiting (at most one per key: the bound that keeps memory flat)."""
        with self._cond:
            return len(self._slots)

    def busy(self) -> bool:
        with self._cond:
            return self._busy_key is not None

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is waiting or being handled (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._slots and self._busy_key is None, timeout)

    # -- worker thread ---------------------------------------------------------------------
    def _take(self):
        """Next (key, item) in round-robin order; caller holds the lock and _slots is not empty."""
        n = len(self._order)
        for i in range(n):
            key = self._order[(self._next + i) % n]
            if key in self._slots:
                self._next = (self._next + i + 1) % n
                return key, self._slots.pop(key)
        raise AssertionError("no waiting item")  # unreachable: _slots keys are all in _order

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._slots)
                if self._stop:
                    self._busy_key = None
                    self._cond.notify_all()
                    return
                key, item = self._take()
                self._busy_key = key
            try:
                self._handler(key, item)
            except Exception as exc:  # the worker must survive any bad item
                if self._on_error is not None:
                    try:
                        self._on_error(key, item, exc)
                    except Exception:
                        pass
            finally:
                with self._cond:
                    self._handled[key] = self._handled.get(key, 0) + 1
                    self._busy_key = None
                    self._cond.notify_all()
