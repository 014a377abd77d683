"""Joining the cluster: an agent or worker presents its join token to a control plane.

A join token is an API key with the ``node`` role (``llmos keys create NAME --role
node``). The process presents it before it takes any work (``POST /api/nodes/join``);
a bad, revoked or expired token is refused there (and logged and audited by the
control plane), and the process stops before it consumes a request. While it runs it
presents the token again every ``CHECK_S``; once refused (the token was revoked), it
stops taking requests. A control plane that does not answer stops nothing: nodes keep
serving through a control-plane outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx

from llmos.errors import LLMOSError, Unavailable

log = logging.getLogger(__name__)

CHECK_S = 5.0
"""How often a running node presents its token again."""
START_PATIENCE_S = 30.0
"""How long a starting node waits for a control plane that does not answer yet."""


class JoinRefused(LLMOSError):
    status = 401
    type = "invalid_request_error"
    code = "join_refused"


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or response.text[:200])
    except ValueError:
        return response.text[:200]


def _answer(control: str, response: httpx.Response) -> dict[str, Any]:
    if response.status_code in (401, 403):
        raise JoinRefused(f"the control plane at {control} refused this node's join token: "
                          f"{_message(response)}")
    if response.status_code != 200:
        raise Unavailable(f"the control plane at {control} answered {response.status_code}: "
                          f"{_message(response)}")
    body: dict[str, Any] = response.json()
    return body


def join(control: str, token: str, name: str, kind: Literal["agent", "worker"], *,
         patience_s: float = START_PATIENCE_S) -> dict[str, Any]:
    """Present the token (blocking); the control plane's answer, or ``JoinRefused``."""
    control = control.rstrip("/")
    deadline = time.monotonic() + patience_s
    while True:
        try:
            response = httpx.post(f"{control}/api/nodes/join",
                                  json={"name": name, "kind": kind},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
        except httpx.HTTPError as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"the control plane at {control} does not answer: "
                                  f"{exc}") from exc
            time.sleep(1.0)
            continue
        answer = _answer(control, response)
        log.info("%s %s joined the cluster at %s with join token %s", kind, name, control,
                 answer.get("key_id"))
        return answer


async def stay_joined(control: str, token: str, on_refused: Callable[[JoinRefused], None],
                      *, interval_s: float = CHECK_S) -> None:
    """Present the token every ``interval_s`` until it is refused: then ``on_refused``."""
    control = control.rstrip("/")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                 timeout=10) as client:
        while True:
            await asyncio.sleep(interval_s)
            try:
                _answer(control, await client.get(f"{control}/api/whoami"))
            except JoinRefused as exc:
                log.error("%s: this node stops taking requests", exc.message)
                on_refused(exc)
                return
            except (httpx.HTTPError, LLMOSError) as exc:
                log.warning("could not check the join token with %s: %s", control, exc)
