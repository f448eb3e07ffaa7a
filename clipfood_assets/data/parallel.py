"""Bounded, order-preserving parallel map over threads.

PIL decoding/encoding and numpy release the GIL, so threads give real speed-up for image
work without pickling anything across processes.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    func: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    total: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[R]:
    """Yield ``func(item)`` for each item, in input order, using ``workers`` threads.

    At most ``4 * workers`` items are in flight, so memory stays bounded however many items
    there are. ``progress(done, total)`` is called from the calling thread after each result.
    Exceptions raised by ``func`` propagate to the caller.
    """
    workers = max(1, int(workers))
    if workers == 1:
        for done, item in enumerate(items, start=1):
            result = func(item)
            if progress is not None:
                progress(done, total if total is not None else done)
            yield result
        return
    pending: deque[Future[R]] = deque()
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clipfood-data") as pool:
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= 4 * workers:
                done += 1
                result = pending.popleft().result()
                if progress is not None:
                    progress(done, total if total is not None else done)
                yield result
        while pending:
            done += 1
            result = pending.popleft().result()
            if progress is not None:
                progress(done, total if total is not None else done)
            yield result
