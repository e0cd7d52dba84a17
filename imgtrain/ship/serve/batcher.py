"""Micro-batching: concurrent requests share one model call.

One worker thread takes the first waiting request, then whatever else is already queued (up to `max_batch`
images, waiting at most `max_wait_s` for more), runs the model once and hands each request its rows.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    # a request: its images, the future their rows go to, and that future's event loop
    _Job = tuple[np.ndarray, asyncio.Future[np.ndarray], asyncio.AbstractEventLoop]


class Batcher:
    def __init__(
        self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 64, max_wait_s: float = 0.002
    ) -> None:
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self._queue: queue.Queue[_Job] = queue.Queue()
        self.batches = 0  # model calls made; with `requests` this shows how much batching happened
        self.requests = 0
        self._thread = threading.Thread(target=self._work, name="imgtrain-batcher", daemon=True)
        self._thread.start()

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put((images, future, loop))
        return await future

    def _work(self) -> None:
        while True:
            jobs = [self._queue.get()]
            n = len(jobs[0][0])
            while n < self.max_batch:
                try:
                    job = self._queue.get(timeout=self.max_wait_s)
                except queue.Empty:
                    break
                jobs.append(job)
                n += len(job[0])
            results: list[np.ndarray | Exception]
            try:
                probs = self.predict(np.concatenate([j[0] for j in jobs]))
                results, start = [], 0
                for images, _, _ in jobs:
                    results.append(probs[start : start + len(images)])
                    start += len(images)
            except Exception as err:  # the model failed: every waiting request gets the error
                results = [err] * len(jobs)
            self.batches += 1
            self.requests += len(jobs)
            for (_, future, loop), result in zip(jobs, results):
                loop.call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future[np.ndarray], result: np.ndarray | Exception) -> None:
    if future.cancelled():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
