"""Every queue, topic and header name on the bus lives here."""

from __future__ import annotations

from typing import Literal

from llmos.bus.base import QueueOptions

INFER_QUEUE_PREFIX = "llmos.infer."
REPLY_QUEUE_PREFIX = "llmos.reply."
CANCEL_TOPIC = "llmos.control.cancel"
HEARTBEAT_TOPIC = "llmos.control.heartbeat"
COMMAND_TOPIC = "llmos.control.command"
EVERYONE = "*"
"""A ``beat`` command's worker id that names every worker and node agent (a roll call)."""
ROLL_CALL_WAIT_S = 1.0
"""How long a gateway that made a roll call gives the workers to answer it."""
NODE_STATUS_TOPIC = "llmos.control.node"
ASSIGNMENT_TOPIC = "llmos.control.assignment"
CHANGED_TOPIC = "llmos.control.changed"
"""The management API says here that desired state changed: the controller looks now."""
KEYS_TOPIC = "llmos.control.keys"
"""A gateway says here that an API key or a project's limits changed: every gateway
reloads its keys now (they also look every ``auth.RELOAD_INTERVAL_S``)."""
REQUEST_EVENTS_TOPIC = "llmos.telemetry.requests"
LOG_EVENTS_TOPIC = "llmos.telemetry.logs"
TRAFFIC_TOPIC = "llmos.telemetry.traffic"
"""Gateways report the requests they admit and hold, per deployment (the autoscaler)."""
TRAFFIC_INTERVAL_S = 0.5
TELEMETRY_TTL_S = 60.0
HEARTBEAT_INTERVAL_S = 5.0
"""Heartbeats and commands live two intervals, so nobody acts on stale ones."""
NODE_INTERVAL_S = 2.0
"""Agents heartbeat this often; a node that misses NODE_LOST_AFTER of them is lost."""
NODE_LOST_AFTER = 3

# A request whose worker fails this many times is poison: it is dropped, not bounced on.
INFER_DELIVERY_LIMIT = 5
# Beyond this many waiting requests a deployment answers 429 instead of queueing more.
INFER_MAX_LENGTH = 10_000
DEAD_QUEUE_PREFIX = "llmos.dead.infer."

HEADER_REQUEST_ID = "x-request-id"
HEADER_ATTEMPT = "x-llmos-attempt"  # on API responses: which delivery answered


Tier = Literal["priority", "default", "flex"]
TIERS: tuple[Tier, ...] = ("priority", "default", "flex")
"""Service tiers, best first (OpenAI's ``service_tier``); each has its own queue."""


def bus_name(deployment: str, project: str = "default") -> str:
    """A deployment's name on the bus (its queues, its workers' heartbeats): its own in
    project ``default``, ``_<project>.<deployment>`` in any other, so two projects'
    deployments of one name never share a queue. (No two collide: a project name has no
    dot, and a deployment's cannot start with ``_``.)"""
    return deployment if project == "default" else f"_{project}.{deployment}"


def infer_queue(deployment: str, tier: Tier = "default") -> str:
    """``llmos.infer.<deployment>``, or ``llmos.infer-<tier>.<deployment>`` for the others."""
    if tier == "default":
        return f"{INFER_QUEUE_PREFIX}{deployment}"
    return f"llmos.infer-{tier}.{deployment}"


def dead_letter_queue(deployment: str) -> str:
    return f"{DEAD_QUEUE_PREFIX}{deployment}"


def infer_queue_options(deployment: str) -> QueueOptions:
    """How every process declares a deployment's request queue (they must agree)."""
    return QueueOptions(durable=True, delivery_limit=INFER_DELIVERY_LIMIT,
                        max_length=INFER_MAX_LENGTH,
                        dead_letter_queue=dead_letter_queue(deployment))


DIRECT_QUEUE_PREFIX = "llmos.direct."


def direct_queue(deployment: str, unique: str) -> str:
    """A replica's own request queue, ``llmos.direct.<deployment>.<unique>`` (``unique``:
    12 hex digits, new with each start and reconnect): exclusive, gone with the replica.
    Gateways send it the requests whose prompt prefix it holds (prefix-aware routing)."""
    return f"{DIRECT_QUEUE_PREFIX}{deployment}.{unique}"


DIRECT_QUEUE_OPTIONS = QueueOptions(durable=False, exclusive=True)


def reply_queue(gateway_id: str) -> str:
    return f"{REPLY_QUEUE_PREFIX}{gateway_id}"


SUBSCRIPTION_INFIX = ".sub-"


def subscription_queue(topic: str, unique: str) -> str:
    """A subscriber's own queue on a topic, where a broker needs one (RabbitMQ):
    ``<topic>.sub-<unique>``, so a broker user may make them only for the topics it may
    read."""
    return f"{topic}{SUBSCRIPTION_INFIX}{unique}"
