"""Micro-batching: concurrent requests are grouped into engine calls, off the event loop.

A request takes a queue place (``admit``) before its image is decoded, so a full queue answers 503 without
spending a decode; the place is kept until its batch starts. Requests gathered in one window run as one
graph call per image size. Every item carries a deadline: one that has passed before its call starts costs
no compute, and a call whose every request has timed out is cancelled in ONNX Runtime between two nodes.
A failed call fails its own requests once; nothing is run twice. After a call estimated to need more than
``SHRINK_AFTER_MB``, the memory arena hands its unused regions back, so one large request does not keep
the process at its peak.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segensemble.runtime.sessions import RunCancelled, RunControl

SHRINK_AFTER_MB = 256.0


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
        # `workers` engine calls may run at once (the session is thread-safe); 1 keeps latency lowest
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        self._slots = asyncio.Semaphore(workers)
        self._task: asyncio.Task | None = None
        self.admitted = 0  # queue places taken: requests decoding or waiting, not yet running
        self.in_flight = 0

    @property
    def depth(self) -> int:
        return self.admitted

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        while self._queue.qsize() or self.in_flight:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=True)

    def admit(self) -> None:
        """Take a queue place before decoding; QueueFull when none is left. Pair with submit() or release()."""
        if self.admitted >= self.max_queue:
            raise QueueFull()
        self.admitted += 1

    def release(self) -> None:
        """Give back a place whose request failed before submit()."""
        self.admitted -= 1

    async def submit(self, image: np.ndarray, want: frozenset, timeout_s: float):
        """Queue an admitted image; its prediction, or DeadlineExceeded after ``timeout_s``."""
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
            self.admitted -= len(batch)
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
        """One engine call per image size among ``live``, one after another on this worker."""
        loop = asyncio.get_running_loop()
        try:
            by_size: dict[tuple, list[_Item]] = {}
            for item in live:
                by_size.setdefault(item.image.shape, []).append(item)
            for group in by_size.values():
                group = self._drop_expired(group)
                if not group:
                    continue
                want = frozenset().union(*(i.want for i in group))
                control = RunControl(shrink=self.engine.cost(group[0].image.shape[:2], len(group)).memory_mb > SHRINK_AFTER_MB)
                cancel = loop.call_at(loop.time() + max(i.deadline for i in group) - time.monotonic(), control.cancel)
                try:
                    results = await loop.run_in_executor(self._executor, self.engine.run, [i.image for i in group], want, control)
                except RunCancelled:
                    results = [DeadlineExceeded()] * len(group)
                except Exception as exc:  # handed to this call's requests, once
                    results = [exc] * len(group)
                finally:
                    cancel.cancel()
                for item, result in zip(group, results):
                    _settle(item, result=result)
        finally:
            self.in_flight -= len(live)
            self._slots.release()


def _settle(item: _Item, result=None, error: Exception | None = None) -> None:
    if item.future.done():
        return
    if error is None and isinstance(result, Exception):
        error = result
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
