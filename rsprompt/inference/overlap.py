"""Running the prediction stages overlapped on three threads, ending cleanly on any error.

:func:`run_overlapped` reads on one worker thread, blends/writes on another and runs the forward
pass on the calling thread, with bounded queues between them. The first error of any thread stops
all three and is raised on the calling thread; no thread is left waiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class _Worker(threading.Thread):
    """A daemon thread that records its exception and then sets ``stop`` for the others."""

    def __init__(self, target: Callable[[], None], name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self._stop_all = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except _Stop:
            pass
        except BaseException as exc:
            self.error = exc
            self._stop_all.set()  # nobody may wait for this thread any more


def _compute_loop(
    q_in: queue.Queue,
    q_out: queue.Queue,
    compute: Callable[[Any], Any],
    writer_t: threading.Thread,
    stop: threading.Event,
) -> None:
    """The calling thread's part: compute every item until the end marker or a stop."""
    while True:
        try:
            item = _get(q_in, stop)
        except _Stop:
            return  # a worker failed: its error is raised by the caller
        if item is None:
            _put(q_out, None, stop)
            while writer_t.is_alive() and not stop.is_set():
                writer_t.join(timeout=0.1)
            return
        _put(q_out, compute(item), stop)


def run_overlapped(
    read_batches: Callable[[], Iterator[Any]],
    compute: Callable[[Any], Any],
    blend: Callable[[Any], None],
    prefetch: int,
) -> None:
    """Run ``blend(compute(item)) for item in read_batches()`` on three threads.

    Reading runs on one worker thread, blending/writing on another and the forward pass on the
    calling thread (bounded queues between them). The first error of any thread stops all three
    and is raised here.
    """
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    q_out: queue.Queue = queue.Queue(maxsize=2)

    def read_loop() -> None:
        for item in read_batches():
            _put(q_in, item, stop)
        _put(q_in, None, stop)

    def write_loop() -> None:
        while (item := _get(q_out, stop)) is not None:
            blend(item)

    reader_t = _Worker(read_loop, "rsprompt-reader", stop)
    writer_t = _Worker(write_loop, "rsprompt-writer", stop)
    reader_t.start()
    writer_t.start()
    try:
        _compute_loop(q_in, q_out, compute, writer_t, stop)
    except _Stop:
        pass  # a worker failed while the forward pass waited on it: raised below
    finally:
        stop.set()
        reader_t.join()
        writer_t.join()
    for t in (reader_t, writer_t):
        if t.error is not None:
            raise t.error
