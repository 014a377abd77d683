"""Capacity planning: the cheapest (replicas, slots per replica) for a traffic and an
objective, vertical and horizontal in one answer.

A replica with more slots serves more requests at once, but each more slowly (decode
shares the machine), and needs more memory (a KV cache per slot). So every slot count
of the replica's measured curve is a different server: its service time comes from
the prompt and output lengths at *that* slot count's speeds, Erlang C (with the
Allen-Cunneen correction) gives the fewest slots in all for the objective, and the
replicas are those slots in whole replicas. The cheapest shape is the one needing the
least memory in all (fewer replicas on a tie).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmos.autoscale.erlang import Queue, fewest_servers, mean_wait, wait_percentile


@dataclass(frozen=True)
class SlotSpeed:
    """How fast one request goes on a replica running ``slots`` requests at once."""

    slots: int
    prefill_tps: float
    """Prompt tokens per second of one request."""
    decode_tps: float
    """Generated tokens per second of one request."""

    def service_s(self, prompt_tokens: float, output_tokens: float) -> float:
        return prompt_tokens / self.prefill_tps + output_tokens / self.decode_tps


@dataclass(frozen=True)
class Objective:
    wait_s: float
    """The wait before a request starts (its queueing, not its generation)."""
    percentile: float = 0.99
    """The fraction of requests that must start within ``wait_s``."""


@dataclass(frozen=True)
class Shape:
    replicas: int
    slots: int
    service_s: float
    """Mean seconds one request holds a slot, at this slot count."""
    wait_s: float
    """The wait at the objective's percentile."""
    mean_wait_s: float
    utilization: float
    memory_bytes: int
    """All replicas' memory together."""


def shapes(rate: float, prompt_tokens: float, output_tokens: float,
           curve: Sequence[SlotSpeed], memory: Callable[[int], int], objective: Objective,
           *, service_cv2: float = 1.0) -> list[Shape]:
    """Every slot count of ``curve`` sized for the objective, cheapest first.
    ``memory(slots)`` is one replica's memory at that slot count (the registry's
    estimate)."""
    if rate <= 0:
        raise ValueError("the arrival rate is positive")
    found = []
    for speed in curve:
        service_s = speed.service_s(prompt_tokens, output_tokens)
        servers = fewest_servers(rate, service_s, wait_s=objective.wait_s,
                                 percentile=objective.percentile, service_cv2=service_cv2)
        replicas = math.ceil(servers / speed.slots)
        queue = Queue(rate, service_s, replicas * speed.slots, service_cv2)
        found.append(Shape(replicas=replicas, slots=speed.slots, service_s=service_s,
                           wait_s=wait_percentile(queue, objective.percentile),
                           mean_wait_s=mean_wait(queue), utilization=queue.utilization,
                           memory_bytes=replicas * memory(speed.slots)))
    return sorted(found, key=lambda s: (s.memory_bytes, s.replicas, s.slots))


def cheapest(rate: float, prompt_tokens: float, output_tokens: float,
             curve: Sequence[SlotSpeed], memory: Callable[[int], int],
             objective: Objective, *, service_cv2: float = 1.0) -> Shape:
    """The shape needing the least memory that meets the objective."""
    if not curve:
        raise ValueError("no slot count to plan with")
    return shapes(rate, prompt_tokens, output_tokens, curve, memory, objective,
                  service_cv2=service_cv2)[0]
