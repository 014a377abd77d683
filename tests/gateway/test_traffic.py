"""The traffic a gateway reports to the autoscaler: arrivals since the last report and
requests in flight, a deployment at zero reported once more, and at once when asked."""

from __future__ import annotations

import asyncio

from llmos.bus import names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import TrafficReport, decode
from llmos.gateway.traffic import TrafficMeter


def counts(report: TrafficReport | None) -> dict[str, tuple[int, int]]:
    assert report is not None
    return {t.deployment: (t.arrivals, t.in_flight) for t in report.deployments}


def test_reports_count_arrivals_once_and_in_flight_until_done() -> None:
    meter = TrafficMeter(MemoryBus(), "g1")
    assert meter.report() is None
    end_a = meter.arrive("default", "a")
    end_b = meter.arrive("default", "a")
    meter.arrive("team", "b")
    report = meter.report()
    assert counts(report) == {"a": (2, 2), "b": (1, 1)}
    end_a()
    end_a()  # (a second call changes nothing)
    assert counts(meter.report()) == {"a": (0, 1), "b": (0, 1)}
    end_b()
    assert counts(meter.report()) == {"a": (0, 0), "b": (0, 1)}  # a: zero, said once
    assert counts(meter.report()) == {"b": (0, 1)}


def test_an_urgent_arrival_is_reported_at_once() -> None:
    async def main() -> TrafficReport:
        bus = MemoryBus()
        await bus.connect()
        heard: asyncio.Queue[TrafficReport] = asyncio.Queue()

        async def on_report(message: object) -> None:
            heard.put_nowait(decode(TrafficReport, message.body))  # type: ignore[attr-defined]

        subscription = await bus.subscribe(names.TRAFFIC_TOPIC, on_report)
        meter = TrafficMeter(bus, "g1", interval_s=60.0)
        meter.start()
        try:
            await asyncio.sleep(0)
            meter.arrive("default", "cold", urgent=True)
            return await asyncio.wait_for(heard.get(), 5.0)
        finally:
            await meter.stop()
            await subscription.cancel()
            await bus.close()
    assert counts(asyncio.run(main())) == {"cold": (1, 1)}
