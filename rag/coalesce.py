"""Merge calls made in the same event-loop turn into a few batched calls (the DataLoader pattern).

Milvus answers one search request carrying many query vectors far faster than as many single-vector
requests: each request pays its gRPC round trip and, under Strong consistency, waits for the server's
time tick. When many searches start together (a gather, several chat streams at once), the store
submits them here and they leave as a few multi-vector requests. A lone search is sent on the next
loop turn, so it waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
Q = TypeVar("Q")
R = TypeVar("R")


class Coalescer(Generic[K, Q, R]):
    """Collects items per key during one loop turn, then calls `run(key, items)` on them in batches.

    `run` returns one result per item, in order. A batch holds at most `max_batch` items; one turn's
    items are spread over at most `max_requests` concurrent calls (so the server can use several cores),
    but a call is only split off once it has `min_batch` items. A failing call fails only its own items;
    a caller that is cancelled simply stops waiting for its result.
    """

    def __init__(
        self,
        run: Callable[[K, list[Q]], Awaitable[Sequence[R]]],
        max_batch: int,
        max_requests: int = 4,
        min_batch: int = 1,
    ) -> None:
        if max_batch < 1 or max_requests < 1 or min_batch < 1:
            raise ValueError("max_batch, max_requests and min_batch must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.max_requests = max_requests
        self.min_batch = min(min_batch, max_batch)
        self._pending: dict[K, list[tuple[Q, asyncio.Future[R]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # batched calls made, for tests and benchmarks

    async def submit(self, key: K, item: Q) -> R:
        """Queue `item` under `key` and wait for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        pending = self._pending.setdefault(key, [])
        pending.append((item, future))
        if len(pending) == 1:  # the first of this turn schedules the flush behind everyone already queued
            loop.call_soon(self._flush, key)
        return await future

    def batch_sizes(self, n: int) -> list[int]:
        """How `n` items of one turn are split: into up to `max_requests` near-equal calls of at least
        `min_batch` items, more only when `max_batch` demands it."""
        calls = max(min(self.max_requests, n // self.min_batch), -(-n // self.max_batch), 1)
        base, extra = divmod(n, calls)
        return [base + (1 if i < extra else 0) for i in range(calls)]

    def _flush(self, key: K) -> None:
        pending = self._pending.pop(key, [])
        gate = asyncio.Semaphore(self.max_requests)
        start = 0
        for size in self.batch_sizes(len(pending)):
            task = asyncio.ensure_future(self._dispatch(key, pending[start : start + size], gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            start += size

    async def _dispatch(self, key: K, batch: list[tuple[Q, asyncio.Future[R]]], gate: asyncio.Semaphore) -> None:
        async with gate:
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # drop callers that gave up
            if not batch:
                return
            self.calls += 1
            try:
                results = await self._run(key, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batched call returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the failure, then it propagates
                for _, fut in batch:
                    if fut.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
