"""Least-privilege RabbitMQ permissions for a node's own broker user.

RabbitMQ grants a user three regular expressions over resource names (queues and
exchanges): what it may declare or delete (configure), publish to or bind to (write),
and consume or bind from (read). A node's processes need:

- its deployments' request queues (every tier) and its replicas' own request queues
  (``llmos.direct.<deployment>.<hex>``): to declare and consume them; their dead-letter
  queues: to declare them (the gateways read those);
- the topics it listens to (cancels, worker commands, assignments, worker heartbeats):
  to declare and read them;
- the topics it speaks on (heartbeats, node status, request and log telemetry): to
  declare and write them;
- its subscriptions' own queues (``<topic>.sub-<hex>``), on the topics it listens to;
- the default exchange, to answer into a gateway's reply queue.

So it cannot read another deployment's requests or a gateway's replies, and cannot
publish a control command (a drain, an assignment, a cancel, a "desired state changed").
What AMQP cannot narrow: the default exchange routes to any queue by name, so a node
that may answer may also put messages into other queues it knows the name of.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmos.bus import names

LISTENS = (names.CANCEL_TOPIC, names.COMMAND_TOPIC, names.ASSIGNMENT_TOPIC,
           names.HEARTBEAT_TOPIC)
SPEAKS = (names.HEARTBEAT_TOPIC, names.NODE_STATUS_TOPIC, names.REQUEST_EVENTS_TOPIC,
          names.LOG_EVENTS_TOPIC)
_DEFAULT_EXCHANGE = r"amq\.default"


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str

    def rabbitmqctl(self, user: str, vhost: str = "/") -> list[str]:
        """The ``rabbitmqctl`` command that grants them."""
        return ["rabbitmqctl", "set_permissions", "-p", vhost, user, self.configure,
                self.write, self.read]


def _any_of(patterns: Sequence[str]) -> str:
    return "^(" + "|".join(patterns) + ")$"


def _queues(deployments: Sequence[str] | None, project: str
            ) -> tuple[list[str], list[str]]:
    """Patterns of the request queues and of their dead-letter queues."""
    if deployments is None:  # every deployment: a node whose replicas the controller places
        return ([*(re.escape(names.infer_queue("", tier)) + ".+" for tier in names.TIERS),
                 re.escape(names.DIRECT_QUEUE_PREFIX) + ".+"],
                [re.escape(names.dead_letter_queue("")) + ".+"])
    keys = [names.bus_name(d, project) for d in deployments]
    return ([*(re.escape(names.infer_queue(k, tier)) for k in keys for tier in names.TIERS),
             *(re.escape(names.direct_queue(k, "")) + "[0-9a-f]{12}" for k in keys)],
            [re.escape(names.dead_letter_queue(k)) for k in keys])


def node_permissions(deployments: Sequence[str] | None = None,
                     project: str = "default") -> Permissions:
    """The permissions of a node that serves ``deployments`` of ``project`` (None: any
    deployment of any project, as an agent does whose replicas the controller places;
    name them for a dedicated worker or a node pinned to some deployments)."""
    if deployments is not None and not deployments:
        raise ValueError("a node serves at least one deployment (or any: None)")
    requests, dead = _queues(deployments, project)
    listens = [re.escape(t) for t in LISTENS]
    speaks = [re.escape(t) for t in SPEAKS]
    topics = sorted(set(listens) | set(speaks))
    # Its subscriptions' own queues, on the topics it listens to only.
    own = [t + re.escape(names.SUBSCRIPTION_INFIX) + "[0-9a-f]+" for t in listens]
    return Permissions(configure=_any_of([*requests, *dead, *topics, *own]),
                       write=_any_of([_DEFAULT_EXCHANGE, *speaks, *own]),
                       read=_any_of([*requests, *listens, *own]))
