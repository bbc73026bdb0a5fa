"""The coalescer on a real event loop: what it merges, how it splits, and how failures and cancels stay local."""

from __future__ import annotations

import asyncio

import pytest

from rag.coalesce import Coalescer


class Recorder:
    """A batched call that records its batches and how many ran at once."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.in_flight = self.most_in_flight = 0
        self.fail_on = fail_on

    async def __call__(self, key: str, items: list[str]) -> list[str]:
        self.batches.append((key, list(items)))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if self.fail_on in items:
                raise ValueError(f"bad item {self.fail_on}")
            return [f"{key}:{item}" for item in items]
        finally:
            self.in_flight -= 1


def test_calls_started_together_become_one_batch_with_results_in_order() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=100, max_requests=1)

    async def main() -> list[str]:
        return await asyncio.gather(*(coalescer.submit("k", str(i)) for i in range(10)))

    assert asyncio.run(main()) == [f"k:{i}" for i in range(10)]
    assert run.batches == [("k", [str(i) for i in range(10)])] and coalescer.calls == 1


def test_keys_are_never_mixed() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=100, max_requests=1)

    async def main() -> list[str]:
        return await asyncio.gather(*(coalescer.submit(k, str(i)) for i in range(4) for k in ("a", "b")))

    results = asyncio.run(main())
    assert results == [f"{k}:{i}" for i in range(4) for k in ("a", "b")]
    assert sorted(run.batches) == [("a", ["0", "1", "2", "3"]), ("b", ["0", "1", "2", "3"])]


def test_a_large_turn_is_split_within_the_batch_and_request_limits() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=3, max_requests=2)
    assert coalescer.batch_sizes(10) == [3, 3, 2, 2]
    assert Coalescer(run, max_batch=100, max_requests=4).batch_sizes(10) == [3, 3, 2, 2]
    assert Coalescer(run, max_batch=100, max_requests=4).batch_sizes(1) == [1]
    assert Coalescer(run, max_batch=100, max_requests=8, min_batch=32).batch_sizes(10) == [10]
    assert Coalescer(run, max_batch=100, max_requests=8, min_batch=32).batch_sizes(100) == [34, 33, 33]
    assert Coalescer(run, max_batch=20, max_requests=2, min_batch=32).batch_sizes(50) == [17, 17, 16]

    async def main() -> list[str]:
        return await asyncio.gather(*(coalescer.submit("k", str(i)) for i in range(10)))

    assert asyncio.run(main()) == [f"k:{i}" for i in range(10)]
    assert [len(items) for _, items in run.batches] == [3, 3, 2, 2]
    assert run.most_in_flight == 2


def test_calls_made_one_after_another_are_not_held_back() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=100)

    async def main() -> list[str]:
        return [await coalescer.submit("k", str(i)) for i in range(3)]

    assert asyncio.run(main()) == ["k:0", "k:1", "k:2"]
    assert [items for _, items in run.batches] == [["0"], ["1"], ["2"]]


def test_a_failing_batch_fails_only_its_own_callers() -> None:
    run = Recorder(fail_on="1")
    coalescer = Coalescer(run, max_batch=2, max_requests=2)

    async def main() -> list[object]:
        return await asyncio.gather(*(coalescer.submit("k", str(i)) for i in range(4)), return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert results[2:] == ["k:2", "k:3"]


def test_a_cancelled_caller_is_left_out_of_the_batch() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=100, max_requests=1)

    async def main() -> list[str]:
        tasks = [asyncio.ensure_future(coalescer.submit("k", str(i))) for i in range(3)]
        await asyncio.sleep(0)  # every task has queued its item; the flush comes next turn
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        return [done[0], done[2]]

    assert asyncio.run(main()) == ["k:0", "k:2"]
    assert run.batches == [("k", ["0", "2"])]


def test_a_batched_call_must_answer_every_item() -> None:
    async def short(_key: str, items: list[str]) -> list[str]:
        return items[:-1]

    coalescer = Coalescer(short, max_batch=10, max_requests=1)

    async def main() -> None:
        await asyncio.gather(coalescer.submit("k", "a"), coalescer.submit("k", "b"))

    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        asyncio.run(main())


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Coalescer(Recorder(), max_batch=0)
