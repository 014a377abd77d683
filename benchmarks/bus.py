"""Bus benchmark: the LLMOS backends against bare client libraries, in one run.

(0)   memory://, in-process (the ceiling of the bus code itself);
(i)   transient messages, no confirms, manual acks, on a classic queue:
      LLMOS amqp:// against bare aiormq and against pika;
(ii)  persistent messages with publisher confirms on a quorum queue:
      LLMOS amqp:// against bare aio-pika with windowed confirms, and against
      pika's per-message synchronous confirms;
(iii) with --redis: LLMOS redis:// against bare redis-py on Streams;
(iv)  with --nats: LLMOS nats:// against bare nats-py on JetStream (PubAck awaited,
      pull consumer, explicit acks);
(v)   with --kafka: LLMOS kafka:// against bare aiokafka (acks=all, a group consumer
      committing record by record);
and the request-reply round trip of a 200-byte message, p50/p99, on memory://,
amqp:// and each backend asked for.

Throughput is messages/s from the first publish until the consumer has acked the
last one (publisher and consumer run at once). Each case runs --runs times,
alternated; the table shows medians and the ratios against the baselines.

    .venv/bin/python benchmarks/bus.py [--messages 20000] [--runs 3] [--url amqp://…]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 200
WINDOW = 256  # publishes in flight for the confirmed cases


def qname(kind: str) -> str:
    return f"bench.{kind}.{uuid.uuid4().hex[:8]}"


# LLMOS backend ---------------------------------------------------------------------------

async def llmos_throughput(url: str, n: int, *, durable: bool) -> float:
    from llmos.bus import Delivery, QueueOptions, open_bus

    bus = open_bus(url)
    await bus.connect()
    name = qname("llmos")
    await bus.declare_queue(name, QueueOptions(durable=durable))
    done = asyncio.Event()
    count = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal count
        await delivery.ack()
        count += 1
        if count == n:
            done.set()

    sub = await bus.consume(name, handler, prefetch=WINDOW)
    gate = asyncio.Semaphore(WINDOW)

    async def send() -> None:
        async with gate:
            await bus.publish(name, PAYLOAD, durable=durable)

    started = time.perf_counter()
    if durable:
        await asyncio.gather(*(send() for _ in range(n)))
    else:
        for _ in range(n):
            await bus.publish(name, PAYLOAD, durable=False)
    await done.wait()
    elapsed = time.perf_counter() - started
    await sub.cancel()
    await bus.delete_queue(name)
    await bus.close()
    return n / elapsed


# bare aiormq (transient) and bare aio-pika (confirmed) -------------------------------------

async def aiormq_throughput(url: str, n: int) -> float:
    import aiormq
    from aiormq.abc import DeliveredMessage

    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    name = qname("aiormq")
    await channel.queue_declare(name, durable=False)
    consumer = await connection.channel()
    await consumer.basic_qos(prefetch_count=WINDOW)
    done = asyncio.Event()
    count = 0

    async def on_message(message: DeliveredMessage) -> None:
        nonlocal count
        await message.channel.basic_ack(message.delivery_tag)
        count += 1
        if count == n:
            done.set()

    await consumer.basic_consume(name, on_message)
    props = aiormq.spec.Basic.Properties(delivery_mode=1)
    started = time.perf_counter()
    for _ in range(n):
        await channel.basic_publish(PAYLOAD, routing_key=name, properties=props)
    await done.wait()
    elapsed = time.perf_counter() - started
    await channel.queue_delete(name)
    await connection.close()
    return n / elapsed


async def aiopika_confirmed_throughput(url: str, n: int) -> float:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    name = qname("aiopika")
    queue = await channel.declare_queue(name, durable=True,
                                        arguments={"x-queue-type": "quorum"})
    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=WINDOW)
    consumer_queue = await consumer.get_queue(name, ensure=False)
    done = asyncio.Event()
    count = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        await message.ack()
        count += 1
        if count == n:
            done.set()

    await consumer_queue.consume(on_message)
    gate = asyncio.Semaphore(WINDOW)

    async def send() -> None:
        async with gate:
            await channel.default_exchange.publish(
                aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=name)

    started = time.perf_counter()
    await asyncio.gather(*(send() for _ in range(n)))
    await done.wait()
    elapsed = time.perf_counter() - started
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()
    return n / elapsed


# pika (blocking; consumer in a thread of its own) -------------------------------------------

def pika_throughput(url: str, n: int, *, confirmed: bool) -> float:
    import pika

    params = pika.URLParameters(url)
    publisher = pika.BlockingConnection(params)
    channel = publisher.channel()
    name = qname("pika")
    if confirmed:
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        channel.confirm_delivery()
    else:
        channel.queue_declare(name, durable=False)
    finished = threading.Event()
    ready = threading.Event()

    def consume() -> None:
        connection = pika.BlockingConnection(params)
        ch = connection.channel()
        ch.basic_qos(prefetch_count=WINDOW)
        count = 0

        def on_message(chan: Any, method: Any, props: Any, body: bytes) -> None:
            nonlocal count
            chan.basic_ack(method.delivery_tag)
            count += 1
            if count == n:
                chan.stop_consuming()

        ch.basic_consume(name, on_message)
        ready.set()
        ch.start_consuming()
        connection.close()
        finished.set()

    thread = threading.Thread(target=consume)
    thread.start()
    ready.wait()
    props = pika.BasicProperties(delivery_mode=2 if confirmed else 1)
    started = time.perf_counter()
    for _ in range(n):
        channel.basic_publish("", name, PAYLOAD, props)  # confirmed: waits for each ack
    finished.wait()
    elapsed = time.perf_counter() - started
    thread.join()
    channel.queue_delete(name)
    publisher.close()
    return n / elapsed


# bare redis-py on Streams ---------------------------------------------------------------

async def redispy_throughput(url: str, n: int) -> float:
    """XADD one at a time; one consumer reading WINDOW at once and acking each."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    key = qname("redispy")
    await redis.xgroup_create(key, "g", id="0", mkstream=True)
    count = 0

    async def consume() -> None:
        nonlocal count
        while count < n:
            answer = await redis.xreadgroup("g", "c", {key: ">"}, count=WINDOW, block=1000)
            for _, entries in answer or ():
                for entry_id, _fields in entries:
                    await redis.xack(key, "g", entry_id)
                    count += 1

    started = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for _ in range(n):
        await redis.xadd(key, {"b": PAYLOAD})
    await consumer
    elapsed = time.perf_counter() - started
    await redis.delete(key)
    await redis.aclose()
    return n / elapsed


# bare nats-py on JetStream --------------------------------------------------------------

async def natspy_throughput(url: str, n: int) -> float:
    """Publishes awaiting their PubAck, WINDOW in flight; one pull consumer fetching WINDOW
    at a time and acking each: the same durability as LLMOS's nats:// queues."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    name = qname("natspy").replace(".", "_")
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.q"],
                                     retention=RetentionPolicy.WORK_QUEUE))
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT,
                                               max_ack_pending=-1))
    pull = await js.pull_subscribe_bind("c", stream=name)
    count = 0

    async def consume() -> None:
        nonlocal count
        while count < n:
            try:
                messages = await pull.fetch(WINDOW, timeout=1)
            except TimeoutError:
                continue
            for message in messages:
                await message.ack()
                count += 1

    gate = asyncio.Semaphore(WINDOW)

    async def send() -> None:
        async with gate:
            await js.publish(f"{name}.q", PAYLOAD, stream=name)

    started = time.perf_counter()
    consumer = asyncio.create_task(consume())
    await asyncio.gather(*(send() for _ in range(n)))
    await consumer
    elapsed = time.perf_counter() - started
    await js.delete_stream(name)
    await nc.close()
    return n / elapsed


# bare aiokafka --------------------------------------------------------------------------

async def aiokafka_throughput(url: str, n: int) -> float:
    """Produce with acks=all, WINDOW in flight; a group consumer committing after each
    record, as LLMOS's kafka:// acks do (at least once, record by record)."""
    from urllib.parse import urlsplit

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import OffsetAndMetadata

    servers = urlsplit(url).netloc
    topic = qname("aiokafka")
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    await producer.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=topic,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=10, session_timeout_ms=6000)
    await consumer.start()
    consumer.subscribe([topic])
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    count = 0

    async def consume() -> None:
        nonlocal count
        while count < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=WINDOW)
            for tp, records in batch.items():
                for record in records:
                    await consumer.commit({TopicPartition(tp.topic, tp.partition):
                                           OffsetAndMetadata(record.offset + 1, "")})
                    count += 1

    gate = asyncio.Semaphore(WINDOW)

    async def send() -> None:
        async with gate:
            await producer.send_and_wait(topic, PAYLOAD, partition=0)

    started = time.perf_counter()
    reader = asyncio.create_task(consume())
    await asyncio.gather(*(send() for _ in range(n)))
    await reader
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await producer.stop()
    await admin.delete_topics([topic])
    await admin.close()
    return n / elapsed


# request-reply round trip ----------------------------------------------------------------

async def round_trip(url: str, n: int) -> dict[str, float]:
    from llmos.bus import Delivery, QueueOptions, open_bus

    bus = open_bus(url)
    await bus.connect()
    server_queue, reply_queue = qname("rr-server"), qname("rr-reply")
    await bus.declare_queue(server_queue, QueueOptions(durable=True))
    await bus.declare_queue(reply_queue, QueueOptions(durable=False, exclusive=True))
    waiting: dict[str, asyncio.Future[None]] = {}

    async def serve(delivery: Delivery) -> None:
        await bus.publish(reply_queue, delivery.body, headers=dict(delivery.headers),
                          durable=False)
        await delivery.ack()

    async def on_reply(delivery: Delivery) -> None:
        future = waiting.pop(delivery.headers["id"], None)
        if future is not None:
            future.set_result(None)

    server = await bus.consume(server_queue, serve, prefetch=16)
    replies = await bus.consume(reply_queue, on_reply, prefetch=1, auto_ack=True)
    times: list[float] = []
    loop = asyncio.get_running_loop()
    for i in range(n):
        key = str(i)
        waiting[key] = loop.create_future()
        started = time.perf_counter()
        await bus.publish(server_queue, PAYLOAD, headers={"id": key})
        await waiting[key]
        times.append(time.perf_counter() - started)
    await server.cancel()
    await replies.cancel()
    await bus.delete_queue(server_queue)
    await bus.close()
    times.sort()
    return {"p50_ms": times[len(times) // 2] * 1000,
            "p99_ms": times[int(len(times) * 0.99)] * 1000}


# driver --------------------------------------------------------------------------------

async def run_cases(args: argparse.Namespace) -> dict[str, Any]:
    n, url = args.messages, args.url
    cases: dict[str, Callable[[], Awaitable[float]]] = {
        "memory": lambda: llmos_throughput("memory://", n, durable=False),
        "i_llmos_transient": lambda: llmos_throughput(url, n, durable=False),
        "i_aiormq_transient": lambda: aiormq_throughput(url, n),
        "i_pika_transient": lambda: asyncio.to_thread(pika_throughput, url, n,
                                                      confirmed=False),
        "ii_llmos_confirmed": lambda: llmos_throughput(url, n // 2, durable=True),
        "ii_aiopika_windowed": lambda: aiopika_confirmed_throughput(url, n // 2),
        "ii_pika_per_message": lambda: asyncio.to_thread(pika_throughput, url,
                                                         args.pika_confirmed, confirmed=True),
    }
    if args.redis:
        # (one publish at a time, as the bare case: Redis acknowledges every command)
        cases["iii_llmos_redis"] = lambda: llmos_throughput(args.redis, n // 2, durable=False)
        cases["iii_redispy_streams"] = lambda: redispy_throughput(args.redis, n // 2)
    if args.nats:
        # (stored in JetStream and acknowledged by it, WINDOW in flight, as the bare case)
        cases["iv_llmos_nats"] = lambda: llmos_throughput(args.nats, n // 2, durable=True)
        cases["iv_natspy_jetstream"] = lambda: natspy_throughput(args.nats, n // 2)
    if args.kafka:
        cases["v_llmos_kafka"] = lambda: llmos_throughput(args.kafka, n // 4, durable=True)
        cases["v_aiokafka"] = lambda: aiokafka_throughput(args.kafka, n // 4)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for run in range(args.runs):
        order = names[run % len(names):] + names[:run % len(names)]
        for name in order:
            rate = await cases[name]()
            rates[name].append(rate)
            print(f"run {run + 1} {name:<22} {rate:9.0f} msg/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    rr = {"memory": await round_trip("memory://", args.round_trips),
          "amqp": await round_trip(url, args.round_trips)}
    if args.redis:
        rr["redis"] = await round_trip(args.redis, args.round_trips)
    if args.nats:
        rr["nats"] = await round_trip(args.nats, args.round_trips)
    if args.kafka:
        rr["kafka"] = await round_trip(args.kafka, args.round_trips // 4)
    return {"throughput_msgs_per_s": medians, "runs": rates, "round_trip": rr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--pika-confirmed", type=int, default=3000,
                        help="messages for pika's per-message confirms (slow)")
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--redis", default=None,
                        help="also measure redis:// (e.g. redis://127.0.0.1:6379/0)")
    parser.add_argument("--nats", default=None,
                        help="also measure nats:// (e.g. nats://127.0.0.1:4222)")
    parser.add_argument("--kafka", default=None,
                        help="also measure kafka:// (e.g. kafka://127.0.0.1:9092?partitions=1"
                             "&fetch_max_wait_ms=10 against Tansu)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bus.json")
    args = parser.parse_args()
    results = asyncio.run(run_cases(args))
    t = results["throughput_msgs_per_s"]
    ratios = {
        "i_llmos_over_aiormq": t["i_llmos_transient"] / t["i_aiormq_transient"],
        "i_llmos_over_pika": t["i_llmos_transient"] / t["i_pika_transient"],
        "ii_llmos_over_aiopika_windowed": t["ii_llmos_confirmed"] / t["ii_aiopika_windowed"],
        "ii_llmos_over_pika_per_message": t["ii_llmos_confirmed"] / t["ii_pika_per_message"],
    }
    if "iii_llmos_redis" in t:
        ratios["iii_llmos_over_redispy"] = t["iii_llmos_redis"] / t["iii_redispy_streams"]
    if "iv_llmos_nats" in t:
        ratios["iv_llmos_over_natspy"] = t["iv_llmos_nats"] / t["iv_natspy_jetstream"]
    if "v_llmos_kafka" in t:
        ratios["v_llmos_over_aiokafka"] = t["v_llmos_kafka"] / t["v_aiokafka"]
    results["ratios"] = ratios
    print(f"\n{'case':<24} | {'msg/s (median)':>14}")
    print("-" * 42)
    for name, rate in t.items():
        print(f"{name:<24} | {rate:14.0f}")
    print()
    for name, ratio in ratios.items():
        target = " (target >= 0.8)" if name in ("i_llmos_over_aiormq",
                                                 "ii_llmos_over_aiopika_windowed") else ""
        print(f"{name:<32} {ratio:6.3f}{target}")
    for bus, rr in results["round_trip"].items():
        print(f"request-reply 200 B on {bus:<7} p50 {rr['p50_ms']:.3f} ms  "
              f"p99 {rr['p99_ms']:.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
