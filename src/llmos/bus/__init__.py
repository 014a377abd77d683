"""The message bus: a small protocol and backends chosen by URL scheme."""

from __future__ import annotations

import difflib
import importlib
from urllib.parse import urlsplit

from llmos.bus.base import Bus, Delivery, QueueOptions, Subscription, TopicMessage
from llmos.errors import ConfigError

# scheme -> "module:Class", imported only when a URL asks for it
BACKENDS: dict[str, str] = {
    "memory": "llmos.bus.memory:MemoryBus",
    "amqp": "llmos.bus.rabbitmq:RabbitMQBus",
    "amqps": "llmos.bus.rabbitmq:RabbitMQBus",
    "redis": "llmos.bus.redis_streams:RedisBus",
    "rediss": "llmos.bus.redis_streams:RedisBus",
    "nats": "llmos.bus.nats_jetstream:NatsBus",
    "nats+tls": "llmos.bus.nats_jetstream:NatsBus",
    "kafka": "llmos.bus.kafka:KafkaBus",
    "kafka+ssl": "llmos.bus.kafka:KafkaBus",
}


def open_bus(url: str) -> Bus:
    """Build (but do not connect) the bus backend that ``url``'s scheme names."""
    scheme = urlsplit(url).scheme
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        hint = difflib.get_close_matches(scheme, BACKENDS, n=1)
        did_you_mean = f" Did you mean {hint[0]}://?" if hint else ""
        raise ConfigError(
            f"unknown bus URL scheme {scheme + '://' if scheme else repr(url)}; "
            f"known: {known}.{did_you_mean}"
        )
    module_name, _, class_name = target.partition(":")
    cls: type[Bus] = getattr(importlib.import_module(module_name), class_name)
    return cls(url)  # type: ignore[call-arg]


__all__ = ["BACKENDS", "Bus", "Delivery", "QueueOptions", "Subscription", "TopicMessage",
           "open_bus"]
