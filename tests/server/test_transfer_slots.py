"""TransferSlots: a site never holds more than its share of the slots."""

from __future__ import annotations

import asyncio

from shoal.server.fleet import TransferSlots


def test_one_site_cannot_take_every_slot() -> None:
    async def main() -> None:
        slots = TransferSlots(total=4, per_site=2)
        release = asyncio.Event()
        held: list[str] = []

        async def transfer(site: str) -> None:
            async with slots.hold(site):
                held.append(site)
                await release.wait()

        # site-1 asks for every slot; it gets its two, the rest wait behind them.
        greedy = [asyncio.ensure_future(transfer("site-1")) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert held == ["site-1", "site-1"]
        # Another site still gets one at once.
        other = asyncio.ensure_future(transfer("site-2"))
        await asyncio.sleep(0.05)
        assert held.count("site-2") == 1
        release.set()
        await asyncio.gather(*greedy, other)
        assert held.count("site-1") == 4

    asyncio.run(main())


def test_the_share_is_at_least_one_and_at_most_the_total() -> None:
    assert TransferSlots(total=1, per_site=0).per_site == 1
    assert TransferSlots(total=2, per_site=5).per_site == 2
