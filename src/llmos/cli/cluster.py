"""``llmos deploy``, ``llmos deployments``, ``llmos nodes``, ``llmos events``: the cluster,
over the management API."""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from llmos.cli.client import UrlOption, call_api, err, server_url
from llmos.cli.output import (
    Format,
    JsonOption,
    Listing,
    OutputOption,
    QuietOption,
    chosen,
    data,
    show,
    table,
)

out = Console(soft_wrap=True)

ProjectOption = Annotated[str, typer.Option(help="project of the deployment")]

deployments_app = typer.Typer(help="Deployments: list, show, scale, update, remove.",
                              no_args_is_help=True)
nodes_app = typer.Typer(help="Nodes: list, show, cordon, uncordon, drain.",
                        no_args_is_help=True)

_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def size(text: str) -> int:
    """``3GiB``, ``512MiB``, ``2G`` or bytes."""
    import re

    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", text, re.IGNORECASE)
    if match is None:
        raise typer.BadParameter(f"not a size: {text!r} (examples: 3GiB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def pairs(items: list[str] | None, what: str) -> dict[str, str] | None:
    if not items:
        return None
    out_: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} must be key=value, not {item!r}")
        out_[key] = value
    return out_


def settings_of(items: list[str] | None) -> dict[str, Any] | None:
    """``--set slots=4 --set kv_unified=true``: values read as JSON where they parse."""
    given = pairs(items, "--set")
    if given is None:
        return None
    parsed: dict[str, Any] = {}
    for key, value in given.items():
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


def spec(*, replicas: int | None, settings: list[str] | None, cpu: float | None,
         memory: str | None, gpus: int | None, selector: list[str] | None,
         strategy: str | None, anti_affinity: bool | None, priority: int | None,
         aliases: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"replicas": replicas, "settings": settings_of(settings),
                            "node_selector": pairs(selector, "--selector"),
                            "strategy": strategy, "anti_affinity": anti_affinity,
                            "priority": priority, "aliases": aliases or None}
    resources = {"cpu": cpu, "memory": size(memory) if memory else None, "gpus": gpus}
    if any(v is not None for v in resources.values()):
        body["resources"] = {k: v for k, v in resources.items() if v is not None}
    return {k: v for k, v in body.items() if v is not None}


ReplicasOption = Annotated[int | None, typer.Option("--replicas", "-r", min=0,
                                                    help="how many replicas")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="engine setting key=value (slots, ctx_size, threads, ...), repeatable")]
CpuOption = Annotated[float | None, typer.Option(help="CPU cores one replica needs")]
MemoryOption = Annotated[str | None, typer.Option(
    help="memory one replica needs (e.g. 1.5GiB; default: the model's estimate)")]
GpusOption = Annotated[int | None, typer.Option(help="GPUs one replica needs")]
SelectorOption = Annotated[list[str] | None, typer.Option(
    "--selector", help="label key=value a node must have, repeatable")]
StrategyOption = Annotated[str | None, typer.Option(help="spread or binpack")]
AntiOption = Annotated[bool | None, typer.Option(
    "--anti-affinity/--no-anti-affinity", help="at most one replica per node")]
PriorityOption = Annotated[int | None, typer.Option(min=0, max=100,
                                                    help="higher wins scarce room")]
AliasOption = Annotated[list[str] | None, typer.Option(
    "--alias", help="another model id it is served under, repeatable")]


def deploy(name: Annotated[str, typer.Argument(help="deployment name (its model id)")],
           model: Annotated[str, typer.Argument(help="model reference: name, name:tag, "
                                                     "name@N")],
           replicas: ReplicasOption = None, settings: SetOption = None,
           cpu: CpuOption = None, memory: MemoryOption = None, gpus: GpusOption = None,
           selector: SelectorOption = None, strategy: StrategyOption = None,
           anti_affinity: AntiOption = None, priority: PriorityOption = None,
           alias: AliasOption = None,
           project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Deploy a model under a name; the cluster places its replicas."""
    body = {"name": name, "model": model,
            **spec(replicas=replicas, settings=settings, cpu=cpu, memory=memory, gpus=gpus,
                   selector=selector, strategy=strategy, anti_affinity=anti_affinity,
                   priority=priority, aliases=alias)}
    d = call_api("POST", server_url(url), "/api/deployments", json=body,
                 params={"project": project})
    out.print(f"deployment {d['name']} created: {d['model_version']}, "
              f"{d['replicas']} replica(s)")


@deployments_app.command("ls")
def deployments_ls(project: ProjectOption = "default", output: OutputOption = None,
                   as_json: JsonOption = False, quiet: QuietOption = False,
                   url: UrlOption = None) -> None:
    """Every deployment: replicas asked and ready, version, and why not placed."""
    fmt = chosen(output, as_json)
    found = call_api("GET", server_url(url), "/api/deployments",
                     params={"project": project})["data"]
    if not found and fmt in ("table", "plain") and not quiet:
        err.print("no deployments")
        return
    listing = Listing(("NAME", "MODEL", "READY", "GEN", "STRATEGY", "MESSAGE"))
    for d in found:
        listing.add(d["name"], d["model_version"] or d["model"],
                    f"{d['ready']}/{d['replicas']}", str(d["generation"]), d["strategy"],
                    d["message"] or "")
    show(found, [listing], fmt, quiet)


@deployments_app.command("show")
def deployments_show(name: str, project: ProjectOption = "default",
                     output: OutputOption = None, as_json: JsonOption = False,
                     url: UrlOption = None) -> None:
    """A deployment, its replicas (node, state) and its last events."""
    fmt = chosen(output, as_json)
    d = call_api("GET", server_url(url), f"/api/deployments/{name}",
                 params={"project": project})
    if data(d, fmt):
        return
    out.print(f"[bold]{d['name']}[/bold]  {d['model']} -> {d['model_version']}  "
              f"ready {d['ready']}/{d['replicas']}  generation {d['generation']}  "
              f"{d['strategy']}" + ("  anti-affinity" if d["anti_affinity"] else ""))
    if d["settings"]:
        out.print(f"settings: {d['settings']}")
    if d["resources"]:
        out.print(f"resources: {d['resources']}")
    if d["message"]:
        out.print(f"[yellow]{d['message']}[/yellow]")
    if d.get("autoscale"):
        _print_autoscaler(d["autoscale"], d.get("autoscaler"))
    replicas = Listing(("REPLICA", "NODE", "STATE", "GEN", "RSS", "RESTARTS"),
                       title="replicas")
    for r in d["placed"] or []:
        replicas.add(r["id"], r["node"], r["state"], str(r["generation"]),
                     f"{r['rss'] / 2**20:.0f} MiB" if r["rss"] else "-", str(r["restarts"]))
    table(replicas, fmt)
    _print_events(d["events"] or [], fmt)


def _print_autoscaler(bounds: dict[str, Any], look: dict[str, Any] | None) -> None:
    out.print(f"autoscale: {bounds['min']} to {bounds['max']} replicas; a request starts "
              f"within {bounds['wait_s']:g} s for {bounds['percentile']:.2%}"
              + (f"; to zero after {bounds['idle_s']:g} s idle" if bounds["min"] == 0
                 else ""))
    if not look:
        return
    wait = look["predicted_wait_s"]
    cold = look["cold_start_s"]
    out.print(f"  last look: {look['replicas']} replica(s): {look['reason']}")
    out.print(f"  λ {look['arrival_rate_short']:.2f}/s (10 s), "
              f"{look['arrival_rate_long']:.2f}/s (60 s); service {look['service_s']:.2f} s "
              f"(cv² {look['service_cv2']:.2f}) at {look['slots']} slots; c = "
              f"{look['servers']} slots; {look['in_flight']} in flight, "
              f"{look['waiting']} waiting; predicted wait "
              + ("unbounded" if wait is None else f"{wait:.2f} s")
              + ("" if cold is None else f"; cold start {cold:.1f} s"))


@deployments_app.command("scale")
def deployments_scale(name: str, replicas: Annotated[int, typer.Argument(min=0)],
                      project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Ask for N replicas."""
    call_api("PATCH", server_url(url), f"/api/deployments/{name}",
             json={"replicas": replicas}, params={"project": project})
    out.print(f"{name} scaled to {replicas}")


@deployments_app.command("autoscale")
def deployments_autoscale(
        name: str,
        min_replicas: Annotated[int | None, typer.Option(
            "--min", min=0, help="fewest replicas (0: scale to zero when idle)")] = None,
        max_replicas: Annotated[int | None, typer.Option("--max", min=1,
                                                         help="most replicas")] = None,
        wait: Annotated[float | None, typer.Option(
            help="objective: a request starts within this many seconds ...")] = None,
        percentile: Annotated[float | None, typer.Option(
            help="... for this fraction of requests (0.99)")] = None,
        idle: Annotated[float | None, typer.Option(
            help="with --min 0: seconds without a request before scaling to zero")] = None,
        off: Annotated[bool, typer.Option(
            "--off", help="switch autoscaling off (the replica count stays as it is)")
                       ] = False,
        project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Let the deployment size itself to its traffic (Erlang C against the wait
    objective), or change its bounds; what is not given keeps its current value."""
    base = server_url(url)
    if off:
        call_api("PATCH", base, f"/api/deployments/{name}", json={"autoscale": False},
                 params={"project": project})
        out.print(f"{name}: autoscaling off")
        return
    current = call_api("GET", base, f"/api/deployments/{name}",
                       params={"project": project, "events": 0})
    bounds = dict(current.get("autoscale") or {})
    for key, value in (("min", min_replicas), ("max", max_replicas), ("wait_s", wait),
                       ("percentile", percentile), ("idle_s", idle)):
        if value is not None:
            bounds[key] = value
    d = call_api("PATCH", base, f"/api/deployments/{name}", json={"autoscale": bounds},
                 params={"project": project})
    b = d["autoscale"]
    out.print(f"{name}: autoscaled, {b['min']} to {b['max']} replicas, a request starts "
              f"within {b['wait_s']:g} s for {b['percentile']:.2%}"
              + (f", to zero after {b['idle_s']:g} s idle" if b["min"] == 0 else "")
              + f"; now {d['replicas']}")


@deployments_app.command("update")
def deployments_update(
        name: str,
        model: Annotated[str | None, typer.Option(help="move to this model reference")] = None,
        replicas: ReplicasOption = None, settings: SetOption = None,
        cpu: CpuOption = None, memory: MemoryOption = None, gpus: GpusOption = None,
        selector: SelectorOption = None, strategy: StrategyOption = None,
        anti_affinity: AntiOption = None, priority: PriorityOption = None,
        alias: AliasOption = None,
        project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Change a deployment; a new version, settings or resources roll its replicas one
    at a time."""
    body = spec(replicas=replicas, settings=settings, cpu=cpu, memory=memory, gpus=gpus,
                selector=selector, strategy=strategy, anti_affinity=anti_affinity,
                priority=priority, aliases=alias)
    if model:
        body["model"] = model
    d = call_api("PATCH", server_url(url), f"/api/deployments/{name}", json=body,
                 params={"project": project})
    out.print(f"{name}: generation {d['generation']}, {d['model_version']}")


@deployments_app.command("rm")
def deployments_rm(name: str, project: ProjectOption = "default",
                   url: UrlOption = None) -> None:
    """Remove a deployment: its replicas drain and stop."""
    call_api("DELETE", server_url(url), f"/api/deployments/{name}",
             params={"project": project})
    out.print(f"deployment {name} removed")


@nodes_app.command("ls")
def nodes_ls(output: OutputOption = None, as_json: JsonOption = False,
             quiet: QuietOption = False, url: UrlOption = None) -> None:
    """Every node: state, capacity, labels."""
    fmt = chosen(output, as_json)
    found = call_api("GET", server_url(url), "/api/nodes")["data"]
    if not found and fmt in ("table", "plain") and not quiet:
        err.print("no nodes")
        return
    listing = Listing(("NODE", "STATE", "CPUS", "MEMORY", "LABELS", "SEEN"))
    for n in found:
        state = n["state"] + (" (cordoned)" if n["cordoned"] and n["state"] == "ready"
                              else "")
        cap = n["capacity"]
        labels = ",".join(f"{k}={v}" for k, v in n["labels"].items())
        seen = f"{max(0.0, time.time() - n['last_seen']):.0f}s ago" if n["last_seen"] else "-"
        listing.add(n["name"], state, f"{cap.get('cpu', 0):g}",
                    f"{cap.get('memory', 0) / 2**30:.1f} GiB", labels, seen)
    show(found, [listing], fmt, quiet)


@nodes_app.command("show")
def nodes_show(name: str, output: OutputOption = None, as_json: JsonOption = False,
               url: UrlOption = None) -> None:
    """A node, the replicas on it and its last events."""
    fmt = chosen(output, as_json)
    n = call_api("GET", server_url(url), f"/api/nodes/{name}")
    if data(n, fmt):
        return
    out.print(f"[bold]{n['name']}[/bold]  {n['state']}"
              + ("  cordoned" if n["cordoned"] else "") + f"  {n['capacity']}  {n['labels']}")
    replicas = Listing(("REPLICA", "DEPLOYMENT", "STATE", "GEN"), title="replicas")
    for r in n["replicas"] or []:
        replicas.add(r["id"], r["deployment"], r["state"], str(r["generation"]))
    table(replicas, fmt)
    _print_events(n["events"] or [], fmt)


@nodes_app.command("bus-permissions")
def nodes_bus_permissions(
    user: Annotated[str, typer.Argument(help="the node's own RabbitMQ user")],
    deployment: Annotated[list[str] | None, typer.Option(
        help="a deployment it serves (repeat; none: any, as an agent's replicas)")] = None,
    project: ProjectOption = "default",
    vhost: Annotated[str, typer.Option(help="the RabbitMQ virtual host")] = "/",
    output: OutputOption = None, as_json: JsonOption = False, url: UrlOption = None,
) -> None:
    """The rabbitmqctl command that grants a node's broker user least privilege: its
    deployments' requests and the topics it uses; no other deployment's requests, no
    gateway's replies, no control command."""
    granted = call_api("GET", server_url(url), "/api/nodes/bus-permissions",
                       params={"user": user, "deployment": deployment or [],
                               "project": project, "vhost": vhost})
    if data(granted, chosen(output, as_json)):
        return
    sys.stdout.write(shlex.join(granted["rabbitmqctl"]) + "\n")


def _node_action(action: str, done: str) -> Any:
    def command(name: str, url: UrlOption = None) -> None:
        call_api("POST", server_url(url), f"/api/nodes/{name}/{action}")
        out.print(f"node {name} {done}")
    return command


nodes_app.command("cordon", help="No new replicas go to the node.")(
    _node_action("cordon", "cordoned"))
nodes_app.command("uncordon", help="The node takes new replicas again.")(
    _node_action("uncordon", "uncordoned"))
nodes_app.command("drain", help="Cordon the node and move its replicas elsewhere, one at "
                  "a time.")(_node_action("drain", "draining"))


def rebalance(deployment: Annotated[str | None, typer.Argument(
        help="only this deployment (default: every one)")] = None,
        project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Move replicas where the scheduler would place them now, one at a time (nothing
    moves by itself when nodes join)."""
    params: dict[str, Any] = {"project": project}
    if deployment:
        params["deployment"] = deployment
    result = call_api("POST", server_url(url), "/api/rebalance", params=params)
    names = ", ".join(result["deployments"]) or "none"
    out.print(f"rebalancing: {names} (llmos events shows what moves)")


def events(deployment: Annotated[str | None, typer.Option(help="only this deployment")] = None,
           node: Annotated[str | None, typer.Option(help="only this node")] = None,
           limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
           project: ProjectOption = "default", output: OutputOption = None,
           as_json: JsonOption = False, url: UrlOption = None) -> None:
    """What the cluster did and decided, with reasons, oldest first."""
    fmt = chosen(output, as_json)
    params: dict[str, Any] = {"project": project, "limit": limit}
    if deployment:
        params["deployment"] = deployment
    if node:
        params["node"] = node
    found = call_api("GET", server_url(url), "/api/events", params=params)["data"]
    if not data(found, fmt):
        _print_events(found, fmt)


def _print_events(found: list[dict[str, Any]], fmt: Format) -> None:
    if not found:
        return
    listing = Listing(("AGE", "KIND", "MESSAGE"), title="events")
    for e in found:
        listing.add(f"{max(0.0, time.time() - e['at']):.0f}s", e["kind"], e["message"])
    table(listing, fmt)
