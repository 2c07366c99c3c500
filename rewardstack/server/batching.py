"""Dynamic batching: requests that arrive together are scored in one call of the reward source.

One worker takes the oldest waiting request, then keeps adding requests for up to `max_wait_ms` while the
batch stays within `max_batch_tokens`; the rows of all of them go to `source.score` in one call (a model
source sorts them into length-grouped mini-batches of `batch_size`), and each request gets back exactly
its own rows. Scoring runs on one thread beside the event loop, so the server keeps answering while it
works. At most `max_queue` requests wait; more are refused (QueueFull) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..scores import RewardScores


@dataclass
class Job:
    prompts: list
    responses: list
    tokens: int
    truncated: int
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0
    rows: int = 0
    batches: int = 0
    truncated: int = 0
    refused: int = 0
    largest_batch_requests: int = 0


class DynamicBatcher:
    def __init__(self, source, max_batch_tokens: int = 16384, max_wait_ms: float = 5.0, max_queue: int = 256, batch_size: int = 16):
        self.source, self.batch_size = source, batch_size
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardstack-score")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Score every request already queued, then stop the worker."""
        if self._worker is not None:
            await self.queue.put(None)
            await self._worker
        self._executor.shutdown(wait=True)

    async def call(self, function):
        """`function()` on the scoring thread, between batches (for state that scoring reads)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def score(self, prompts: list, responses: list, tokens: int, truncated: int = 0) -> RewardScores:
        """This request's rewards once its batch is scored; asyncio.QueueFull when the queue is full."""
        job = Job(prompts, responses, tokens, truncated, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.refused += 1
            raise
        return await job.future

    async def _run(self) -> None:
        carried: Job | None = None
        stopping = False
        while not stopping:
            first = carried or await self.queue.get()
            carried = None
            if first is None:
                break
            batch, tokens = [first], first.tokens
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while tokens < self.max_batch_tokens:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - asyncio.get_running_loop().time()
                    if timeout <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), timeout)
                    except TimeoutError:
                        break
                if job is None:
                    stopping = True
                    break
                if tokens + job.tokens > self.max_batch_tokens:
                    carried = job
                    break
                batch.append(job)
                tokens += job.tokens
            await self._score(batch)

    async def _score(self, batch: list[Job]) -> None:
        """Score the batch in one call; if that fails, score each request alone, so only the requests that
        fail themselves get an error (and no request sees another's rows in an error message)."""
        self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(batch))
        prompts = [p for job in batch for p in job.prompts]
        responses = [r for job in batch for r in job.responses]
        try:
            scores = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: self.source.score(prompts, responses, batch_size=self.batch_size))
        except Exception as err:
            if len(batch) > 1:
                for job in batch:
                    await self._score([job])
            elif not batch[0].future.done():
                batch[0].future.set_exception(err)
            return
        self._record(batch, len(responses))
        start = 0
        for job in batch:
            if not job.future.done():  # a client that hung up cancelled its future
                job.future.set_result(scores.rows(slice(start, start + len(job.responses)), job.truncated))
            start += len(job.responses)

    def _record(self, batch: list[Job], rows: int) -> None:
        stats = self.stats
        stats.requests += len(batch)
        stats.rows += rows
        stats.batches += 1
        stats.truncated += sum(job.truncated for job in batch)
