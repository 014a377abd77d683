"""Prefix-aware routing with two real replicas (`llmos worker` processes), on each
networked bus (Kafka: ``LLMOS_TEST_KAFKA=1``, its broker takes long to start).

The turns of a chat land on the replica that served its first turn while it has room;
a hot prefix spreads once its replica is full; after a kill -9 of a session's replica,
its next turn, and the turn it was computing, are answered by the other.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from llmos.bus import names
from tests.bus.test_kafka import Tansu
from tests.bus.test_nats import NATS_URL, reset_nats_queues
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.bus.test_redis import REDIS_URL, reset_redis_queues
from tests.conftest import RunningServer, require_service, start_server, stop_server
from tests.e2e.test_worker_failover import (
    start_worker,
    stop_worker,
    tail,
    wait_for_kafka_group,
    worker_id,
)

MODEL = "gemma-3-270m"
SLOTS = 2
ENV = {"LLMOS_ENGINE__SLOTS": str(SLOTS), "LLMOS_ENGINE__CTX_SIZE": "3072"}


@dataclass
class Pair:
    server: RunningServer
    workers: list[object]
    logs: list[Path]
    ids: list[str]

    def served_by(self, request_id: str, timeout_s: float = 30) -> int:
        """Which worker (0 or 1) logged the end of ``request_id``."""
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(rf"request {re.escape(request_id)}: ok ")
        while time.monotonic() < deadline:
            found = [i for i, log in enumerate(self.logs) if pattern.search(log.read_text())]
            if found:
                assert len(found) == 1, f"{request_id} was answered by both workers"
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no worker logged {request_id}:\n{tail(self.logs[0])}\n"
                             f"{tail(self.logs[1])}")


BUSES = ["amqp", "nats", "redis", *(["kafka"] if os.environ.get("LLMOS_TEST_KAFKA") else [])]


@pytest.fixture(scope="module", params=BUSES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Pair]:
    home = tmp_path_factory.mktemp(f"affinity-{request.param}")
    tansu: Tansu | None = None
    if request.param == "kafka":
        tansu = Tansu(home / "tansu.log")
        tansu.start()
        url = tansu.url("partitions=8&session_timeout_ms=6000&fetch_max_wait_ms=10")
    else:
        url, service, port = {"amqp": (AMQP_URL, "RabbitMQ", 5672),
                              "nats": (NATS_URL, "NATS", 4222),
                              "redis": (REDIS_URL, "Redis", 6379)}[request.param]
        parts = urlsplit(url)
        require_service(service, parts.hostname or "127.0.0.1", parts.port or port)
        {"amqp": lambda: reset_queue(names.infer_queue(MODEL)),
         "nats": lambda: reset_nats_queues(MODEL),
         "redis": lambda: reset_redis_queues(MODEL)}[request.param]()
    workers, logs = [], []
    server = None
    try:
        for name in ("worker-a", "worker-b"):
            process, log = start_worker(home, name, url, extra_env=ENV)
            workers.append(process)
            logs.append(log)
        server = start_server(home, ENV, args=["--bus", url, "--no-worker"])
        if request.param == "kafka":  # until both hold partitions of the shared queue
            wait_for_kafka_group(logs)
        yield Pair(server, workers, logs, [worker_id(log) for log in logs])
    finally:
        if server is not None:
            stop_server(server)
        for process in workers:
            stop_worker(process)
        if tansu is not None:
            tansu.stop()


def system(topic: str) -> dict[str, str]:
    """A system prompt of ~1,500 characters, its own per topic."""
    text = (f"You are a patient tutor of {topic}. Answer in one short sentence. "
            f"Facts you may use about {topic}: ") + " ".join(
        f"Fact {i}: {topic} has a property numbered {i}." for i in range(40))
    return {"role": "system", "content": text}


def ask(client: openai.OpenAI, messages: list[dict[str, str]], request_id: str,
        max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id})
    return answer.choices[0].message.content or ""


def client_of(pair: Pair) -> openai.OpenAI:
    return openai.OpenAI(base_url=pair.server.api, api_key="unused", max_retries=0,
                         timeout=120)


def session(client: openai.OpenAI, pair: Pair, name: str, turns: int) -> list[int]:
    """A chat of ``turns`` turns, each resending the history: who served each turn."""
    messages = [system(name), {"role": "user", "content": "Say hello."}]
    served = []
    for turn in range(turns):
        rid = f"{name}-{turn}"
        reply = ask(client, messages, rid)
        served.append(pair.served_by(rid))
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": f"Tell me fact {turn}."}]
    return served


def test_the_turns_of_a_chat_stay_on_the_replica_of_its_first_turn(pair: Pair) -> None:
    client = client_of(pair)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda n: session(client, pair, n, 4), ["chemistry", "poetry"]))
    for served in runs:
        assert served[1:] == [served[0]] * 3, runs


def test_a_hot_prefix_spreads_once_its_replica_is_full(pair: Pair) -> None:
    client = client_of(pair)
    hot = system("astronomy")
    ask(client, [hot, {"role": "user", "content": "Hi"}], "hot-0")
    first = pair.served_by("hot-0")  # it holds the prefix now
    # More than its replica can hold at once (its slots, and as many again from the
    # shared queue), each long enough that the other replica's consumer, however slow
    # its next pull or read, finds some still waiting in the shared queue.
    questions = [[hot, {"role": "user", "content": f"Question {i}?"}] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ask(client, questions[i], f"hot-{i + 1}", 48), range(8)))
    served = [pair.served_by(f"hot-{i + 1}") for i in range(8)]
    # Its replica takes what its free slots allow; the rest goes to both by the queue.
    assert served.count(1 - first) >= 1, served


def test_after_a_kill_9_the_next_turn_and_the_one_in_flight_are_answered(
        pair: Pair) -> None:
    client = client_of(pair)
    messages = [system("geology"), {"role": "user", "content": "Say hello."}]
    reply = ask(client, messages, "geo-0")
    victim = pair.served_by("geo-0")
    messages += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": "Tell me a long story about rocks."}]
    with ThreadPoolExecutor(1) as pool:
        # A turn in flight on the victim when it dies: routed to it, so only the
        # gateway can send it on (it notices the victim's heartbeats stop).
        in_flight = pool.submit(ask, client, messages, "geo-1", 200)
        time.sleep(1.5)  # well inside its prefill and 200 tokens (checked below)
        pair.workers[victim].send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        started = time.monotonic()
        assert in_flight.result(timeout=90)
    print(f"the turn in flight was answered {time.monotonic() - started:.1f} s after the kill")
    assert pair.served_by("geo-1") == 1 - victim
    # It was on the victim, and the gateway sent it on (no broker could: it was in the
    # victim's own queue, gone with it).
    assert re.search(r"request geo-1: its replica \S+ left before answering",
                     pair.server.log.read_text()), tail(pair.server.log)
    messages += [{"role": "assistant", "content": "..."},
                 {"role": "user", "content": "And one more?"}]
    assert ask(client, messages, "geo-2")
    assert pair.served_by("geo-2") == 1 - victim
