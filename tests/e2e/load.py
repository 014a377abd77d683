"""Steady load on a deployment while a test changes it: every failure is kept."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from openai import OpenAI


def ask(api_base: str, model: str, timeout: float = 120) -> str:
    """One short greedy completion through the official client (no retries)."""
    with OpenAI(base_url=api_base, api_key="none", max_retries=0, timeout=timeout) as client:
        answer = client.completions.create(model=model, prompt="One, two,", max_tokens=2,
                                           temperature=0)
    return answer.choices[0].text


@dataclass
class Load:
    answered: int = 0
    failures: list[str] = field(default_factory=list)


@contextmanager
def steady_load(api_base: str, model: str, clients: int) -> Iterator[Load]:
    """``clients`` threads asking ``model`` one request after another until the block
    ends; the yielded ``Load`` counts the answers and keeps every failure."""
    load = Load()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                ask(api_base, model)
                load.answered += 1
            except Exception as exc:
                load.failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield load
    finally:
        stop.set()
        for t in threads:
            t.join(120)
