"""``llmos models plan``: the cheapest fleet for a traffic, from a measured speed curve.

The curve (a replica's speed per request at each slot count) is given (``--curve``) or
measured here against a running deployment (``--measure``): for each slot count,
that many streamed completions at once, each with a prompt and an output of the
lengths planned for; prefill speed from the time to the first token, decode speed
from the tokens after it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import httpx
import typer

from llmos.cli.client import UrlOption, auth_headers, call_api, err, server_url
from llmos.cli.models import ProjectOption
from llmos.cli.output import JsonOption, Listing, OutputOption, chosen, data, table

GIB = 1 << 30


class MeasureFailed(Exception):
    pass


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _one(base: str, deployment: str, prompt: str, output_tokens: int) -> tuple[int, float,
                                                                              float, int]:
    """(prompt tokens, seconds to the first token, seconds after it, tokens after it)."""
    body = {"model": deployment, "prompt": prompt, "max_tokens": output_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.monotonic()
    first: float | None = None
    usage: dict[str, int] = {}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, headers=auth_headers(),
                      timeout=600) as response:
        if response.status_code != 200:
            response.read()
            raise MeasureFailed(f"{deployment} answered {response.status_code}: "
                                f"{_message(response)}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and any(c.get("text") for c in event.get("choices", [])):
                first = time.monotonic()
            usage = event.get("usage") or usage
    ended = time.monotonic()
    first = first or ended
    return (usage.get("prompt_tokens", 0), first - started, ended - first,
            max(0, usage.get("completion_tokens", 0) - 1))


def measure(base: str, deployment: str, slots: list[int], prompt_tokens: int,
            output_tokens: int) -> list[dict[str, float]]:
    """The speed curve of the deployment's replica, measured (its slots must allow the
    largest count)."""
    prompt = "one two three four " * max(1, prompt_tokens // 4)
    curve = []
    _one(base, deployment, "warm up", 2)
    for count in slots:
        with ThreadPoolExecutor(count) as pool:
            runs = list(pool.map(lambda _: _one(base, deployment, prompt, output_tokens),
                                 range(count)))
        prefill = statistics.median(p / t for p, t, _, _ in runs if t > 0)
        decode = statistics.median(n / t for _, _, t, n in runs if t > 0)
        err.print(f"{count} at once: prefill {prefill:.0f} tokens/s, decode {decode:.1f} "
                  "tokens/s per request")
        curve.append({"slots": count, "prefill_tps": prefill, "decode_tps": decode})
    return curve


def _parse_curve(given: list[str]) -> list[dict[str, float]]:
    curve = []
    for item in given:
        try:
            slots, prefill, decode = item.split(":")
            curve.append({"slots": int(slots), "prefill_tps": float(prefill),
                          "decode_tps": float(decode)})
        except ValueError:
            err.print(f"[red]error:[/red] --curve takes SLOTS:PREFILL_TPS:DECODE_TPS, not "
                      f"{item!r}")
            raise typer.Exit(code=2) from None
    return curve


def plan(
    ref: Annotated[str, typer.Argument(help="the model version (for its memory estimate)")],
    rate: Annotated[float, typer.Option(help="requests per second")],
    wait: Annotated[float, typer.Option(help="seconds a request may wait to start ...")],
    prompt_tokens: Annotated[int, typer.Option(help="prompt tokens per request")] = 256,
    output_tokens: Annotated[int, typer.Option(help="output tokens per request")] = 128,
    percentile: Annotated[float, typer.Option(help="... for this fraction")] = 0.99,
    cv2: Annotated[float, typer.Option(
        help="variance/mean² of service times (1: exponential; same lengths: near 0)")
    ] = 1.0,
    curve: Annotated[list[str] | None, typer.Option(
        help="a measured point SLOTS:PREFILL_TPS:DECODE_TPS (repeat)")] = None,
    measure_slots: Annotated[str | None, typer.Option(
        "--measure", help="measure the curve at these slot counts now, e.g. 1,2,4, "
                          "against --deployment (its replica needs that many slots)")
    ] = None,
    deployment: Annotated[str | None, typer.Option(
        help="the deployment to measure (default: the model's name)")] = None,
    project: ProjectOption = "default",
    output: OutputOption = None, as_json: JsonOption = False, url: UrlOption = None,
) -> None:
    """The cheapest (replicas, slots per replica) for a traffic and a wait objective, by
    Erlang C per slot count of a measured speed curve, with the memory each needs."""
    base = server_url(url)
    if measure_slots:
        try:
            counts = sorted({int(c) for c in measure_slots.split(",")})
        except ValueError:
            err.print("[red]error:[/red] --measure takes slot counts: 1,2,4")
            raise typer.Exit(code=2) from None
        try:
            points = measure(base, deployment or ref.split(":")[0].split("@")[0], counts,
                             prompt_tokens, output_tokens)
        except (MeasureFailed, httpx.HTTPError) as exc:
            err.print(f"[red]error:[/red] could not measure the curve: {exc}")
            raise typer.Exit(code=1) from None
    elif curve:
        points = _parse_curve(curve)
    else:
        err.print("[red]error:[/red] give the replica's speed curve (--curve) or measure "
                  "it (--measure 1,2,4)")
        raise typer.Exit(code=2)
    answer: dict[str, Any] = call_api(
        "POST", base, f"/api/models/{ref}/plan", params={"project": project},
        json={"rate": rate, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
              "wait_s": wait, "percentile": percentile, "service_cv2": cv2,
              "curve": points})
    fmt = chosen(output, as_json)
    if data(answer, fmt):
        return
    listing = Listing(("REPLICAS", "SLOTS", "SERVICE", f"WAIT p{percentile * 100:g}",
                       "MEAN WAIT", "BUSY", "MEMORY"))
    for s in answer["shapes"]:
        listing.add(str(s["replicas"]), str(s["slots"]), f"{s['service_s']:.2f}s",
                    f"{s['wait_s']:.2f}s", f"{s['mean_wait_s']:.2f}s",
                    f"{s['utilization']:.0%}", f"{s['memory_bytes'] / GIB:.2f} GiB")
    table(listing, fmt)
    best = answer["cheapest"]
    sys.stdout.write(f"cheapest: {best['replicas']} replica(s) x {best['slots']} slot(s), "
                     f"{best['memory_bytes'] / GIB:.2f} GiB in all\n")
