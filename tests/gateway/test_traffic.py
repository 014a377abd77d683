"""The traffic a gateway reports to the autoscaler: arrivals since the last report and
requests in flight, a deployment at zero reported once more, and at once when asked."""

from __future__ import annotations

import asyncio

from llmos.bus import names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import TrafficReport, decode
from llmos.gateway.traffic import TrafficMeter
from tests.waiting import eventually


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


def test_an_idle_meter_sleeps_until_a_request_arrives() -> None:
    async def main() -> tuple[int, int, int, list[TrafficReport]]:
        bus = MemoryBus()
        await bus.connect()
        heard: list[TrafficReport] = []

        async def on_report(message: object) -> None:
            heard.append(decode(TrafficReport, message.body))  # type: ignore[attr-defined]

        subscription = await bus.subscribe(names.TRAFFIC_TOPIC, on_report)
        meter = TrafficMeter(bus, "g1", interval_s=0.02)
        looks = 0
        report = meter.report

        def counted() -> TrafficReport | None:
            nonlocal looks
            looks += 1
            return report()

        meter.report = counted  # type: ignore[method-assign]
        meter.start()
        try:
            await asyncio.sleep(0.3)  # (15 intervals)
            idle = looks
            end = meter.arrive("default", "m")
            await eventually(lambda: heard, what="a report")
            end()
            await eventually(lambda: counts(heard[-1]) == {"m": (0, 0)}, what="the last")
            done = looks
            await asyncio.sleep(0.3)
            return idle, done, looks, heard
        finally:
            await meter.stop()
            await subscription.cancel()
            await bus.close()
    idle, done, looks, heard = asyncio.run(main())
    assert idle == 0
    assert counts(heard[0]) == {"m": (1, 1)}
    assert looks <= done + 1  # after the report at zero, one look that finds nothing
