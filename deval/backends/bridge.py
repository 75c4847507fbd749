"""Run an async producer on its own event loop in a thread and yield what it puts on a queue, as it arrives."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Awaitable, Callable, Iterator


def stream(produce: Callable[[queue.Queue, dict], Awaitable[None]], name: str = "deval-http") -> Iterator:
    """Yield the items produce(out, handle) puts on `out`; an exception it raises is raised here.

    produce must set handle["loop"] and handle["task"] (its running loop and task) so that a consumer that stops
    early cancels it."""
    out: queue.Queue = queue.Queue()
    handle: dict = {}
    done = object()

    def work() -> None:
        try:
            asyncio.run(produce(out, handle))
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
        finally:
            out.put(done)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                break
            if isinstance(item, asyncio.CancelledError):
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        loop, task = handle.get("loop"), handle.get("task")
        if thread.is_alive() and loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass
        thread.join()
