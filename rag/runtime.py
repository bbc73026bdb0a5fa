"""The one background event loop that owns every async client, and the low-priority worker threads.

The async Milvus client binds to the first loop it awaits on and Streamlit reruns have no running loop,
so sync callers (pages, the CLI) hand coroutines to this loop and wait on futures. This is the only
module that touches loop plumbing.

Ingestion's CPU work (reading and OCR, embedding document chunks) runs in `background_executor` threads
whose priority is lowered (`RAG_INGEST_NICE`): on a 2-core machine another user's question and Milvus
then get the cores first, and an upload takes what is left (BENCHMARKS.md, "Stall test").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from rag.errors import OperationTimeoutError

T = TypeVar("T")

_DONE = object()


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread `nice` steps less favoured by the scheduler (Linux: niceness is per thread;
    threads it starts, such as ONNX Runtime's or torch's pools, inherit it). Elsewhere, or when refused,
    nothing."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def background_executor(nice: int, workers: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    """Worker threads running `nice` steps below the process: for bulk CPU work that must yield to questions."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix=name, initializer=lower_thread_priority, initargs=(nice,)
    )


async def _step(agen: AsyncIterator[T]) -> object:
    """The generator's next item, or _DONE at its end."""
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return _DONE


async def _quietly(closing: Awaitable[object]) -> None:
    """Close a generator whose last step may still be finishing (then that step's cancellation closes it)."""
    with contextlib.suppress(Exception):
        await closing


class Runtime:
    """A daemon thread running one asyncio loop for the life of the process."""

    def __init__(self, name: str = "rag-runtime") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop every async client of this process lives on."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True once close() stopped the loop."""
        return not self._thread.is_alive()

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the loop and return a thread-safe future (for background jobs)."""
        if self.closed:
            raise RuntimeError("the runtime is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run a plain callback on the loop soon (e.g. start or cancel a job's task there); returns at once."""
        if self.closed:
            raise RuntimeError("the runtime is closed")
        self._loop.call_soon_threadsafe(callback)

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result; on timeout cancel it."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Runtime.run called from the runtime's own loop; await the coroutine instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise OperationTimeoutError(f"operation exceeded {timeout} s") from exc

    def iterate(self, agen: AsyncIterator[T], timeout: float | None = None) -> Iterator[T]:
        """Yield an async generator's items as a sync iterator (for st.write_stream and terminals)."""
        try:
            while True:
                item = self.run(_step(agen), timeout)
                if item is _DONE:
                    return
                yield item  # type: ignore[misc]
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self.closed:
                self.run(aclose(), timeout=10)

    async def aiterate(self, agen: AsyncIterator[T], timeout: float | None = None) -> AsyncIterator[T]:
        """Yield an async generator's items to a coroutine on another event loop (an ASGI server's): each step
        runs here, on this loop, and its result is awaited there, with no thread waiting in between. A caller
        that stops early (a client gone) has the generator closed on this loop."""
        step: concurrent.futures.Future[object] | None = None
        try:
            while True:
                step = self.submit(_step(agen))
                try:
                    item = await asyncio.wait_for(asyncio.wrap_future(step), timeout)
                except TimeoutError as exc:
                    raise OperationTimeoutError(f"operation exceeded {timeout} s") from exc
                if item is _DONE:
                    return
                yield item  # type: ignore[misc]
        finally:
            if step is not None and not step.done():
                step.cancel()  # the step's task is cancelled on this loop, which ends the generator there
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self.closed:
                self.submit(_quietly(aclose()))  # not awaited: the caller may itself be cancelled

    def close(self) -> None:
        """Cancel pending work, stop the loop and join the thread."""
        if self.closed:
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout=10)
        except Exception:  # noqa: BLE001 - closing must not fail on a stuck task
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
