"""Micro-batching: concurrent requests are grouped into one engine call, off the event loop; the engine
runs the graph once per group of same-size images, asking for the outputs any request of the batch needs.

The queue is bounded (``QueueFull`` past it) and every item carries a deadline: an item whose deadline has
passed before it runs is answered with ``DeadlineExceeded`` and costs no compute. If a batch fails as a
whole, its items are retried one by one so a single bad image cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


@dataclass
class _Item:
    image: np.ndarray
    want: frozenset
    deadline: float
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(self, engine, max_batch: int, window_s: float, max_queue: int, on_batch=None, workers: int = 1):
        self.engine, self.max_batch, self.window_s, self.max_queue = engine, max_batch, window_s, max_queue
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        # `workers` engine calls may run at once (sessions are thread-safe); 1 keeps latency lowest
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        self._slots = asyncio.Semaphore(workers)
        self._task: asyncio.Task | None = None
        self.in_flight = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        while self._queue.qsize() or self.in_flight:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray, want: frozenset, timeout_s: float):
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull()
        item = _Item(image, want, time.monotonic() + timeout_s, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded() from None

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()  # a free worker first, so requests keep gathering meanwhile
            batch = await self._collect()
            live = self._drop_expired(batch)
            if not live:
                self._slots.release()
                continue
            self.in_flight += len(live)
            self.on_batch(len(live))
            asyncio.get_running_loop().create_task(self._run(live))

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        end = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    @staticmethod
    def _drop_expired(batch: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        for item in batch:
            if item.deadline <= now:
                _settle(item, error=DeadlineExceeded())
        return [item for item in batch if item.deadline > now]

    async def _run(self, live: list[_Item]) -> None:
        try:
            want = frozenset().union(*(i.want for i in live))
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, [i.image for i in live], want)
            for item, result in zip(live, results):
                _settle(item, result=result)
        finally:
            self.in_flight -= len(live)
            self._slots.release()

    def _predict(self, images: list[np.ndarray], want: frozenset) -> list:
        try:
            return self.engine.predict(images, want)
        except Exception:
            return [self._one(img, want) for img in images]

    def _one(self, image: np.ndarray, want: frozenset):
        try:
            return self.engine.predict([image], want)[0]
        except Exception as exc:  # handed to that request only
            return exc


def _settle(item: _Item, result=None, error: Exception | None = None) -> None:
    if item.future.done():
        return
    if error is None and isinstance(result, Exception):
        error = result
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
