"""Micro-batching with admission control: requests are grouped into engine calls off the event loop, and no
more work is let in than the server can finish before its deadlines.

A request takes a place (``admit``) once its header is read, before its image is decoded. The place carries
the request's work (megapixel-views, ``cost.py``) and its deadline, counted from its arrival. The batcher
measures its service time (seconds per megapixel-view, a moving average of real calls), so admission can
refuse at once (``Overloaded``: 503 + Retry-After) a request that would wait past its deadline behind the
work already admitted: under overload the server keeps answering at its capacity instead of timing
everything out. A batch holds as many requests as fit ``BATCH_SHARE`` of the deadline by that measure (on a
CPU, batching buys no throughput, and a batch of eight slow images would outlive every deadline in it) and
as many as fit the memory budget in one call (``cost.py``, counted for the batch, not per image).

Requests gathered in one window run as one graph call per image size. One whose deadline has passed, or will
pass before its call can finish, is answered 504 without compute; a call whose every request has timed out is
cancelled in ONNX Runtime between two nodes. A failed call fails its own requests once; nothing is run twice.
After a call estimated to need more than ``SHRINK_AFTER_MB``, the memory arena hands its unused regions back.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from segensemble.runtime.sessions import RunCancelled, RunControl

SHRINK_AFTER_MB = 256.0
BATCH_SHARE = 0.25  # a batch may take at most this share of a request's time budget
SMOOTHING = 0.3  # weight of the newest call in the service-time average


class QueueFull(Exception):
    """No place left: ``max_queue`` requests already wait, or the admitted work would outlast this deadline."""

    def __init__(self, reason: str, retry_after_s: float = 1.0):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


@dataclass
class Ticket:
    """A request's place: its work (megapixel-views) and its deadline (``time.monotonic()``)."""

    work: float
    deadline: float


@dataclass
class _Item:
    ticket: Ticket
    image: np.ndarray
    want: frozenset
    future: asyncio.Future = field(repr=False)


class ServiceClock:
    """Seconds per megapixel-view, averaged over the calls actually run (None until the first)."""

    def __init__(self) -> None:
        self.seconds_per_work: float | None = None

    def record(self, seconds: float, work: float) -> None:
        if work <= 0:
            return
        sample = seconds / work
        old = self.seconds_per_work
        self.seconds_per_work = sample if old is None else (1 - SMOOTHING) * old + SMOOTHING * sample

    def seconds(self, work: float) -> float:
        return 0.0 if self.seconds_per_work is None else work * self.seconds_per_work


class Batcher:
    def __init__(self, engine, max_batch: int, window_s: float, max_queue: int, on_batch=None, workers: int = 1):
        self.engine, self.max_batch, self.window_s, self.max_queue = engine, max_batch, window_s, max_queue
        self.workers = workers
        self.on_batch = on_batch or (lambda size: None)
        self.clock = ServiceClock()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        # `workers` engine calls may run at once (the session is thread-safe); 1 keeps latency lowest
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        self._slots = asyncio.Semaphore(workers)
        self._task: asyncio.Task | None = None
        self.admitted = 0  # places taken: requests decoding, waiting or running
        self.backlog = 0.0  # their work, megapixel-views
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

    def admit(self, work: float = 0.0, deadline: float = math.inf) -> Ticket:
        """A place for a request of ``work`` megapixel-views due by ``deadline``; QueueFull when there is none.
        Pair with submit() or release()."""
        if self.admitted >= self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} requests admitted)", 1.0)
        wait = self.clock.seconds(self.backlog) / self.workers
        if time.monotonic() + wait + self.clock.seconds(work) > deadline:
            raise QueueFull(f"overloaded: the {self.admitted} requests admitted need about {wait:.1f}s, past this request's "
                            "deadline", max(1.0, wait))
        self.admitted += 1
        self.backlog += work
        return Ticket(work, deadline)

    def release(self, ticket: Ticket) -> None:
        """Give back a place (its request failed before or after submit())."""
        self.admitted -= 1
        self.backlog = max(0.0, self.backlog - ticket.work)

    async def submit(self, ticket: Ticket, image: np.ndarray, want: frozenset):
        """Queue an admitted image; its prediction, or DeadlineExceeded at its deadline."""
        item = _Item(ticket, image, want, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), max(0.0, ticket.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise DeadlineExceeded() from None

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()  # a free worker first, so requests keep gathering meanwhile
            batch = await self._collect()
            live = self._drop_hopeless(batch)
            if not live:
                self._slots.release()
                continue
            self.in_flight += len(live)
            self.on_batch(len(live))
            asyncio.get_running_loop().create_task(self._run(live))

    def batch_limit(self, work: float, deadline: float) -> int:
        """Requests of ``work`` each that fit one call: within ``BATCH_SHARE`` of the time left by ``deadline``."""
        if self.clock.seconds_per_work is None or work <= 0:
            return self.max_batch
        budget = BATCH_SHARE * max(0.0, deadline - time.monotonic())
        return max(1, min(self.max_batch, int(budget / self.clock.seconds(work))))

    async def _collect(self) -> list[_Item]:
        first = await self._queue.get()
        batch = [first]
        limit = self.batch_limit(first.ticket.work, first.ticket.deadline)
        end = time.monotonic() + self.window_s
        while len(batch) < limit:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    def _drop_hopeless(self, batch: list[_Item]) -> list[_Item]:
        """Answer 504 at once, without compute, the requests that cannot finish by their deadline."""
        now, live = time.monotonic(), []
        for item in batch:
            if item.ticket.deadline <= now + self.clock.seconds(item.ticket.work):
                self._finish(item, error=DeadlineExceeded())
            else:
                live.append(item)
        return live

    def _calls(self, live: list[_Item]) -> list[list[_Item]]:
        """Engine calls: one image size each, as many images as the memory budget allows in one call."""
        by_size: dict[tuple, list[_Item]] = {}
        for item in live:
            by_size.setdefault(item.image.shape, []).append(item)
        calls = []
        for shape, group in by_size.items():
            per_call = max_images_in_memory(self.engine, shape[:2], len(group))
            calls += [group[i:i + per_call] for i in range(0, len(group), per_call)]
        return calls

    async def _run(self, live: list[_Item]) -> None:
        """The engine calls of ``live``, one after another on this worker."""
        loop = asyncio.get_running_loop()
        try:
            for group in self._calls(live):
                group = self._drop_hopeless(group)
                if not group:
                    continue
                want = frozenset().union(*(i.want for i in group))
                control = RunControl(shrink=self.engine.cost(group[0].image.shape[:2], len(group)).memory_mb > SHRINK_AFTER_MB)
                cancel = loop.call_at(loop.time() + max(i.ticket.deadline for i in group) - time.monotonic(), control.cancel)
                started = time.monotonic()
                try:
                    results = await loop.run_in_executor(self._executor, self.engine.run, [i.image for i in group], want, control)
                    self.clock.record(time.monotonic() - started, sum(i.ticket.work for i in group))
                except RunCancelled:
                    results = [DeadlineExceeded()] * len(group)
                except Exception as exc:  # handed to this call's requests, once
                    results = [exc] * len(group)
                finally:
                    cancel.cancel()
                for item, result in zip(group, results):
                    self._finish(item, result=result)
        finally:
            for item in live:  # those a failure above left unsettled
                self._finish(item, error=DeadlineExceeded())
            self.in_flight -= len(live)
            self._slots.release()

    def _finish(self, item: _Item, result=None, error: Exception | None = None) -> None:
        """Settle a request once and give its place back."""
        if item.future.done():
            return
        self.release(item.ticket)
        if error is None and isinstance(result, Exception):
            error = result
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)


def max_images_in_memory(engine, image_hw: tuple[int, int], wanted: int) -> int:
    """How many images of ``image_hw`` one call may hold within the engine's memory budget (at least one: a
    single image was admitted against the same budget)."""
    n = wanted
    while n > 1 and engine.cost(image_hw, n).memory_mb > engine.budget.max_memory_mb:
        n -= 1
    return n
