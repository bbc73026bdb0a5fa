import asyncio
import os
import threading
from pathlib import Path

import pytest

from rag.errors import OperationTimeoutError
from rag.runtime import Runtime, background_executor


def niceness(native_id: int) -> int:
    """A thread's niceness as the kernel reports it (/proc/self/task/<tid>/stat, field 19)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_background_threads_run_below_the_process_and_their_children_inherit_it() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    pool = background_executor(6, 1, "test-low")
    try:

        def where() -> tuple[int, int]:
            child: list[int] = []
            started = threading.Thread(target=lambda: child.append(niceness(threading.get_native_id())))
            started.start()
            started.join()
            return niceness(threading.get_native_id()), child[0]

        own, child = pool.submit(where).result(timeout=10)
    finally:
        pool.shutdown()
    assert own == min(19, base + 6)
    assert child == own  # a pool the worker starts (ONNX Runtime's, torch's) runs at the same low priority
    assert niceness(threading.get_native_id()) == base


def test_run_uses_one_loop_thread() -> None:
    rt = Runtime()
    try:

        async def where() -> tuple[int, asyncio.AbstractEventLoop]:
            return threading.get_ident(), asyncio.get_running_loop()

        a, b = rt.run(where()), rt.run(where())
        assert a == b and a[0] != threading.get_ident() and a[1] is rt.loop
    finally:
        rt.close()
    assert rt.closed


def test_iterate_streams_items_in_order() -> None:
    rt = Runtime()
    try:

        async def gen():  # noqa: ANN202
            for i in range(5):
                await asyncio.sleep(0)
                yield i

        assert list(rt.iterate(gen())) == [0, 1, 2, 3, 4]
    finally:
        rt.close()


def test_timeout_cancels_the_work() -> None:
    rt = Runtime()
    cancelled = threading.Event()
    try:

        async def slow() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(OperationTimeoutError):
            rt.run(slow(), timeout=0.2)
        assert cancelled.wait(5)
    finally:
        rt.close()


def test_errors_propagate() -> None:
    rt = Runtime()
    try:

        async def boom() -> None:
            raise ValueError("x")

        with pytest.raises(ValueError):
            rt.run(boom())
    finally:
        rt.close()


def test_call_soon_runs_a_callback_on_the_loop_thread() -> None:
    rt = Runtime()
    try:
        ran = threading.Event()
        where: list[int] = []

        def callback() -> None:
            where.append(threading.get_ident())
            ran.set()

        rt.call_soon(callback)
        assert ran.wait(5) and where[0] == rt.run(_thread_id())
    finally:
        rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.call_soon(lambda: None)


async def _thread_id() -> int:
    return threading.get_ident()


def test_aiterate_streams_to_another_loop_and_closes_the_generator_when_left() -> None:
    """An ASGI server's loop reads the engine's generator step by step; each step runs on the runtime's thread,
    and a reader that stops early (a client gone) has the generator closed there."""
    rt = Runtime()
    seen: list[str] = []
    closed = threading.Event()
    try:

        async def gen():  # noqa: ANN202
            try:
                for i in range(100):
                    seen.append(threading.current_thread().name)
                    await asyncio.sleep(0)
                    yield i
            finally:
                closed.set()

        async def read(stop_after: int | None) -> list[int]:
            got = []
            async for item in rt.aiterate(gen()):
                got.append(item)
                if stop_after is not None and len(got) == stop_after:
                    break
            return got

        assert asyncio.run(read(None)) == list(range(100)) and closed.wait(5)
        assert set(seen) == {"rag-runtime"}  # every step on the runtime's loop, none on the reader's
        closed.clear()
        assert asyncio.run(read(3)) == [0, 1, 2]
        assert closed.wait(5), "the generator left early was not closed"

        async def stuck():  # noqa: ANN202
            await asyncio.sleep(30)
            yield 1

        async def slow_reader() -> None:
            async for _ in rt.aiterate(stuck(), timeout=0.2):
                pass

        with pytest.raises(OperationTimeoutError):
            asyncio.run(slow_reader())
    finally:
        rt.close()
