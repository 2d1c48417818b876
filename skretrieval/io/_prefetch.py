"""Running the input side ahead of the encoder, in threads, with bounded memory.

Decoding (PIL) and resizing (torch) release the GIL, so threads overlap them with the
encoder's forward pass without the start-up and pickling costs of worker processes.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor


def ordered_map(fn: Callable, items: Iterable, n_threads: int, window: int) -> Iterator:
    """``fn(item)`` for each item, computed by ``n_threads`` threads, yielded in order.

    At most ``window`` results are computed ahead of the one being consumed, so memory stays
    bounded however long ``items`` is. An exception from ``fn`` is raised where its result
    would have been yielded; the work still queued is then cancelled.
    """
    items = iter(items)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="skretrieval-decode") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


_DONE = object()


def prefetch(iterable: Iterable, depth: int) -> Iterator:
    """Iterate ``iterable`` in a background thread, at most ``depth`` items ahead.

    An exception raised by the iterable is re-raised in the consumer. When the consumer
    stops early (an exception, ``break``), the background thread is told to stop and
    finishes its current item; no thread is left behind.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                if not _put(buffer, (item, None), stop):
                    break
            else:
                _put(buffer, (_DONE, None), stop)
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(buffer, (_DONE, exc), stop)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:  # a generator: run its clean-up (cancel queued decoding)
                close()

    worker = threading.Thread(target=produce, name="skretrieval-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _put(buffer: queue.Queue, entry, stop: threading.Event) -> bool:
    """Put ``entry`` unless the consumer has gone; returns whether it was put."""
    while not stop.is_set():
        try:
            buffer.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
