"""StallWatch: ends a block once nothing moved for its limit, and only then."""

from __future__ import annotations

import asyncio

import pytest

from shoal.transport.aio import StalledError, StallWatch, Ticking


def test_an_idle_block_raises_stalled_error_naming_the_transfer() -> None:
    async def main() -> None:
        with pytest.raises(StalledError, match="task to site-1: no data moved for 0.1 s"):
            async with StallWatch(0.1, "task to site-1"):
                await asyncio.sleep(30)
        # The task is not left cancelled: it carries on.
        await asyncio.sleep(0)

    asyncio.run(main())


def test_a_block_that_keeps_moving_runs_past_the_limit() -> None:
    async def main() -> int:
        watch = StallWatch(0.2, "upload")
        ticks = 0
        async with watch:
            for _ in range(10):  # 0.5 s in all, never 0.2 s without a tick
                await asyncio.sleep(0.05)
                watch.tick()
                ticks += 1
        return ticks

    assert asyncio.run(main()) == 10


def test_ticking_frames_count_as_progress() -> None:
    async def frames():  # type: ignore[no-untyped-def]
        for i in range(6):
            await asyncio.sleep(0.05)
            yield i

    async def main() -> list[int]:
        watch = StallWatch(0.2, "upload")
        async with watch:
            return [f async for f in Ticking(frames(), watch)]

    assert asyncio.run(main()) == list(range(6))


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def guarded() -> None:
        async with StallWatch(30, "upload"):
            await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.ensure_future(guarded())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
