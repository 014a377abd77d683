"""Typed messages that cross the bus, serialized as JSON (never pickle).

Each carries a schema version ``v``: a process that receives a version it does
not know fails loudly instead of guessing.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from llmos.errors import BusError

SCHEMA_VERSION = 1

log = logging.getLogger(__name__)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1
    """The schema version (SCHEMA_VERSION); messages of another version fail to decode."""


class InferenceRequest(_Message):
    request_id: str
    deployment: str
    kind: Literal["chat", "completion", "embedding"]
    body: dict[str, Any]
    """Engine-ready OpenAI-style parameters, already validated by the gateway."""
    stream: bool
    max_tokens_explicit: bool = True
    """False when the gateway filled in its default; the worker may then shorten it."""
    reply_to: str
    deadline: float
    """Unix time after which nobody waits for the answer."""
    project: str = "default"
    queued_at: float = 0.0
    """Unix time the gateway put it on the bus (0: not said)."""
    tier: Literal["priority", "default", "flex"] = "default"
    """Its service tier (the queue it was put on says so too; a replica's own queue does
    not)."""
    prefixes: list[str] = []
    """Hashes of the prompt's prefixes, shortest first (``gateway/prefixes.py``): the
    replica that serves it advertises them, so the next request sharing one goes there."""
    attempt_base: int = 0
    """Deliveries of this request before it was put on the bus again by its gateway (its
    replica left): the attempt a replica answers is this plus its delivery count."""


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """One generated token's log probability, and the most likely alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ToolCallDelta(BaseModel):
    """A piece of a tool call: the first of a call has its ``id`` and ``name``, every
    piece may add to its JSON ``arguments`` text. Calls are told apart by ``index``."""

    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)
    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None


class ReplyChunk(_Message):
    request_id: str
    attempt: int
    seq: int
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    """Of the tokens of ``text``, when the request asked for them."""
    tool_calls: list[ToolCallDelta] | None = None
    """The tool calls the engine parsed out of the generated text, piece by piece."""
    embeddings: list[str] | None = None
    """An embedding request's vectors, one per input: base64 of little-endian float32
    (OpenAI's ``encoding_format: base64``, 4 bytes a dimension)."""
    final: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    served_by: str | None = None
    """On the first and the final chunk: the own queue of the replica that answers (its
    route)."""


class ReplyBatch(_Message):
    """What a reply queue carries: the chunks a worker had ready for one gateway at once,
    of one request or of many (each names its request; a gateway reads them by ``seq``)."""

    chunks: list[ReplyChunk]


class Cancel(_Message):
    request_id: str


class Heartbeat(_Message):
    """A worker says it is alive, every ``interval_s``; stale after two intervals."""

    worker_id: str
    epoch: str
    """New on every start of the process: a restarted worker is a new epoch."""
    deployment: str
    host: str
    slots: int
    busy: int
    draining: bool = False
    sent_at: float
    interval_s: float
    pid: int = 0
    home: str | None = None
    """The state directory of its process, when it has its own."""
    version: str = ""
    """The LLMOS version it runs."""
    started_at: float = 0.0
    engine: dict[str, Any] = {}
    """Its engine's settings: model file, slots, context, threads, …"""
    leaving: bool = False
    """Its last heartbeat: it has stopped (a goodbye, so it leaves lists at once)."""
    route: str | None = None
    """Its own request queue: a gateway sends a request there whose prefix it holds."""
    prefixes: list[str] = []
    """The prefix hashes of the requests it served last (its prompt cache's), newest
    last."""

    @property
    def expires_at(self) -> float:
        return self.sent_at + 2 * self.interval_s


class Command(_Message):
    """An order to one worker process (its id and epoch), void after ``expires_at``;
    ``beat`` (beat now) may also be for every worker and node agent (``names.EVERYONE``,
    any epoch): a roll call (``beacon.roll_call``)."""

    worker_id: str
    epoch: str
    action: Literal["drain", "resume", "beat"]
    issued_at: float
    expires_at: float


class ReplicaSpec(BaseModel):
    """What an agent needs to run one replica: registry references and settings, never
    file paths or command lines."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    replica_id: str
    deployment: str
    project: str = "default"
    model: str
    """The pinned version, ``name@N``."""
    engine: str = "llama.cpp"
    settings: dict[str, Any] = {}
    """Engine settings that differ from the agent's defaults."""
    generation: int = 1


ReplicaPhase = Literal["pulling", "starting", "ready", "failed", "stopping"]


class ReplicaStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    replica_id: str
    deployment: str
    generation: int
    state: ReplicaPhase
    rss: int = 0
    """Resident memory of its worker process (0: not measured, e.g. in-process)."""
    restarts: int = 0
    unhealthy: int = 0
    """Times its worker was replaced because it stopped answering (heartbeats)."""
    message: str | None = None


class NodeStatus(_Message):
    """An agent's heartbeat: what its node has, uses, holds and runs."""

    node: str
    epoch: str
    """New on every start of the agent."""
    labels: dict[str, str] = {}
    cpus: float
    memory: int
    gpus: int = 0
    load: float = 0.0
    """CPU utilisation of the node, 0 to 1."""
    memory_used: int = 0
    cached: list[str] = []
    """Model versions (``name@N``) in the node's cache."""
    replicas: list[ReplicaStatus] = []
    sent_at: float
    interval_s: float
    cluster: str = ""
    """The cluster whose orders the node heeds ("": none heard yet)."""


class Assignment(_Message):
    """The active controller's word on what one node runs: every replica it should have.
    An agent starts what is missing and stops what is not listed. ``term`` is the
    controller's lease term: orders of an older term than one already seen are void.
    ``cluster`` is its store's cluster id: a node heeds one cluster's orders, so two
    control planes with their own stores on one bus do not fight over it ("": from
    before cluster ids, heeded by any node)."""

    node: str
    term: int
    replicas: list[ReplicaSpec]
    issued_at: float
    cluster: str = ""


class RequestEvent(_Message):
    """Telemetry: a worker finished a request (its log line's fields, for the gateways'
    metrics and logs)."""

    request_id: str
    deployment: str
    worker_id: str
    outcome: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float
    at: float
    project: str = "default"
    attempt: int = 1
    queue_wait_s: float | None = None
    first_token_s: float | None = None
    host: str = ""
    pid: int = 0
    """The worker's process: a gateway in the same one has logged the line already."""
    service_s: float | None = None
    """Seconds it held an engine slot (the autoscaler's service time)."""

    def log_fields(self) -> dict[str, Any]:
        """The fields of the request's log line at the worker (and at the gateways)."""
        return {"deployment": self.deployment, "project": self.project,
                "worker": self.worker_id, "attempt": self.attempt, "outcome": self.outcome,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "queue_wait_s": self.queue_wait_s, "first_token_s": self.first_token_s,
                "duration_s": self.duration_s}


class DeploymentTraffic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    project: str
    deployment: str
    arrivals: int
    """Requests admitted since the gateway's last report."""
    in_flight: int
    """Requests admitted and not finished: waiting for a replica, queued or served."""


class TrafficReport(_Message):
    """Telemetry: what one gateway admitted, per deployment, for the autoscaler. Sent
    every ``names.TRAFFIC_INTERVAL_S`` while there is traffic (a deployment whose
    requests all finished is reported once more, at zero), and at once when a request
    arrives for a deployment with no replica taking requests."""

    gateway: str
    at: float
    deployments: list[DeploymentTraffic]


class LogEvent(_Message):
    """Telemetry: a warning or error a worker logged."""

    worker_id: str
    level: str
    logger: str
    message: str
    request_id: str | None = None
    at: float


def encode(message: _Message) -> bytes:
    return message.model_dump_json(exclude_defaults=False).encode()


M = TypeVar("M", bound=_Message)


def decode(cls: type[M], body: bytes) -> M:
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise BusError(f"undecodable {cls.__name__} message: {exc.errors()[0]['msg']}") from exc


def decode_or_ignore(cls: type[M], body: bytes) -> M | None:
    """For broadcasts, where one bad message is skipped (and logged), not fatal."""
    try:
        return decode(cls, body)
    except BusError as exc:
        log.warning("ignored a message: %s", exc.message)
        return None
