"""A node's own RabbitMQ user with the least-privilege patterns of ``bus/permissions.py``,
made on the local broker with ``rabbitmqctl``: it does all a worker of its deployment
does, and cannot read another deployment's requests or a gateway's replies, nor publish
a control command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from llmos.bus import Bus, names, open_bus
from llmos.bus.base import Delivery, TopicMessage
from llmos.bus.permissions import node_permissions
from llmos.errors import BusError
from tests.bus.test_rabbitmq import AMQP_URL
from tests.conftest import REQUIRE_SERVICES, require_service

MINE, OTHER = "perm-mine", "perm-other"
GATEWAY_REPLIES = names.reply_queue("perm-gateway")


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def node_user(deployments: list[str]) -> Iterator[str]:
    """The bus URL of a new broker user for a node serving ``deployments``, with llmos'
    patterns; the user is deleted after."""
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        message = "making a RabbitMQ user needs rabbitmqctl and root"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    # (hex: a password that starts with "-" would be read by rabbitmqctl as an option)
    user, password = f"llmos-node-{secrets.token_hex(4)}", secrets.token_hex(16)
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl(*node_permissions(deployments).rabbitmqctl(user)[1:])
        yield f"amqp://{user}:{password}@{parts.hostname}:{parts.port or 5672}/"
    finally:
        rabbitmqctl("delete_user", user)


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    with node_user([MINE]) as url:
        yield url


@pytest_asyncio.fixture
async def admin() -> AsyncIterator[Bus]:
    """The cluster's own connection (guest): the gateway's side."""
    bus = open_bus(AMQP_URL)
    await bus.connect()
    for deployment in (MINE, OTHER):
        for tier in names.TIERS:
            await bus.delete_queue(names.infer_queue(deployment, tier))
            await bus.declare_queue(names.infer_queue(deployment, tier),
                                    names.infer_queue_options(deployment))
    await bus.declare_queue(GATEWAY_REPLIES)
    yield bus
    for deployment in (MINE, OTHER):
        for tier in names.TIERS:
            await bus.delete_queue(names.infer_queue(deployment, tier))
        await bus.delete_queue(names.dead_letter_queue(deployment))
    await bus.delete_queue(GATEWAY_REPLIES)
    await bus.close()


async def heard(bus: Bus, topic: str, wait_s: float = 1.5) -> list[bytes]:
    """What arrives on ``topic`` within ``wait_s`` (a subscription made first)."""
    got: list[bytes] = []

    async def on(message: TopicMessage) -> None:
        got.append(message.body)

    subscription = await bus.subscribe(topic, on)
    await asyncio.sleep(wait_s)
    await subscription.cancel()
    return got


async def node(url: str) -> Bus:
    bus = open_bus(url)
    await bus.connect()
    return bus


@pytest.mark.asyncio
async def test_a_node_user_does_what_a_worker_does(node_url: str, admin: Bus) -> None:
    worker = await node(node_url)
    try:
        # Declares its queues as a worker does (with their dead-letter queue) and takes
        # a request from one.
        for tier in names.TIERS:
            await worker.declare_queue(names.infer_queue(MINE, tier),
                                       names.infer_queue_options(MINE))
        taken: asyncio.Queue[Delivery] = asyncio.Queue()

        async def take(delivery: Delivery) -> None:
            await taken.put(delivery)

        await worker.consume(names.infer_queue(MINE), take, prefetch=1)
        await admin.publish(names.infer_queue(MINE), b"request")
        delivery = await asyncio.wait_for(taken.get(), 10)
        assert delivery.body == b"request"
        await delivery.ack()
        # Answers into the gateway's reply queue; listens to cancels and commands; speaks
        # on heartbeats and telemetry.
        answers: asyncio.Queue[Delivery] = asyncio.Queue()

        async def answer(delivery: Delivery) -> None:
            await answers.put(delivery)

        await admin.consume(GATEWAY_REPLIES, answer, prefetch=4, auto_ack=True)
        await worker.publish(GATEWAY_REPLIES, b"answer")
        assert (await asyncio.wait_for(answers.get(), 10)).body == b"answer"
        cancels = asyncio.create_task(heard(worker, names.CANCEL_TOPIC))
        beats = asyncio.create_task(heard(admin, names.HEARTBEAT_TOPIC))
        await asyncio.sleep(0.5)
        await admin.broadcast(names.CANCEL_TOPIC, b"cancel")
        await worker.broadcast(names.HEARTBEAT_TOPIC, b"beat")
        # (other processes on this broker may speak there too)
        assert b"cancel" in await cancels
        assert b"beat" in await beats
    finally:
        await worker.close()


@pytest.mark.asyncio
async def test_a_node_user_cannot_read_another_deployments_requests(
        node_url: str, admin: Bus) -> None:
    await admin.publish(names.infer_queue(OTHER), b"someone else's request")
    for queue in (names.infer_queue(OTHER), names.infer_queue(OTHER, "priority"),
                  GATEWAY_REPLIES):
        worker = await node(node_url)

        async def steal(delivery: Delivery) -> None:
            raise AssertionError(f"a node read {delivery.body!r}")

        try:
            with pytest.raises(BusError, match="ACCESS_REFUSED"):
                subscription = await worker.consume(queue, steal, prefetch=1)
                await asyncio.sleep(1.0)  # (a refusal may close the channel just after)
                await subscription.cancel()
        finally:
            await worker.close()
    # The request is still there, for the deployment's own replicas.
    taken: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        await taken.put(delivery)

    await admin.consume(names.infer_queue(OTHER), take, prefetch=1)
    assert (await asyncio.wait_for(taken.get(), 10)).body == b"someone else's request"


@pytest.mark.asyncio
async def test_a_node_user_cannot_publish_control_commands(node_url: str, admin: Bus) -> None:
    for topic in (names.COMMAND_TOPIC, names.ASSIGNMENT_TOPIC, names.CANCEL_TOPIC,
                  names.CHANGED_TOPIC):
        worker = await node(node_url)
        listening = asyncio.create_task(heard(admin, topic))
        await asyncio.sleep(0.5)
        try:
            # Topics publish without confirms: the broker refuses by closing the channel
            # just after (logged), so the caller may not hear of it. Nobody else does.
            with contextlib.suppress(BusError):
                await worker.broadcast(topic, b"forged command")
        finally:
            await worker.close()
        assert b"forged command" not in await listening, f"a node published on {topic}"
