"""``llmos``: serve, worker, workers, chat, version."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console

from llmos import __version__
from llmos.cli.client import (
    UrlOption,
    api_error,
    auth_headers,
    call_api,
    chosen_profile,
    err,
    server_url,
)
from llmos.cli.cluster import deploy, deployments_app, events, nodes_app, rebalance
from llmos.cli.config import config_app
from llmos.cli.keys import audit, keys_app, projects_app, usage, whoami
from llmos.cli.logs import logs
from llmos.cli.models import models_app
from llmos.cli.output import (
    JsonOption,
    Listing,
    OutputOption,
    QuietOption,
    age,
    chosen,
    data,
    show,
    table,
)
from llmos.cli.plan import plan
from llmos.cli.running import ps, run
from llmos.errors import LLMOSError

if TYPE_CHECKING:
    from llmos.settings import Settings

app = typer.Typer(help="LLMOS: an operating system for large language models.",
                  no_args_is_help=True)
out = Console(soft_wrap=True)


# The options of both API servers (serve and control): how they are guarded.
InsecureOption = Annotated[bool, typer.Option(
    help="on a non-loopback address, run open while no API key exists (a trusted "
         "network only)")]
InitAdminKeyOption = Annotated[bool, typer.Option(
    help="make an admin API key unless a live one exists; its token goes to admin.key "
         "in the state directory")]
TlsCertOption = Annotated[Path | None, typer.Option(
    help="serve https with this certificate (PEM, with its chain)")]
TlsKeyOption = Annotated[Path | None, typer.Option(help="the certificate's key (PEM)")]


WorkersOption = Annotated[int | None, typer.Option(
    "--workers", help="gateway processes answering on the address, each with its own event "
                      "loop (default 1; above 1 needs a networked --bus)")]


@app.callback()
def root(profile: Annotated[str | None, typer.Option(
             envvar="LLMOS_PROFILE", help="the client profile to use (see llmos config)")
         ] = None,
         api_key: Annotated[str | None, typer.Option(
             help="the API key to send (default: $LLMOS_API_KEY, or the profile's)")
         ] = None) -> None:
    """LLMOS: an operating system for large language models."""
    chosen_profile.profile = profile
    chosen_profile.api_key = api_key


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(
        help="address to listen on (default: $LLMOS_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(
        help="port to listen on (default: $LLMOS_PORT or 8000)")] = None,
    bus: Annotated[str | None, typer.Option(help="bus URL (default memory://)")] = None,
    storage: Annotated[str | None, typer.Option(
        help="registry storage URL: s3://bucket/prefix?endpoint=…, az://…, gs://…, file://… "
             "(default: the local store in the state directory)")] = None,
    home: Annotated[Path | None, typer.Option(help="state directory ($LLMOS_HOME)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    slots: Annotated[int | None, typer.Option(help="parallel slots of the model")] = None,
    threads: Annotated[int | None, typer.Option(help="engine threads")] = None,
    ctx_size: Annotated[int | None, typer.Option(help="total context, split by slots")] = None,
    insecure: InsecureOption = False,
    init_admin_key: InitAdminKeyOption = False,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    worker: Annotated[bool, typer.Option(
        help="run the default model's replica here (--no-worker: `llmos worker` "
             "processes serve it over the bus)")] = True,
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="a host name the server answers to besides loopback names and IP addresses "
             "(repeatable; $LLMOS_ALLOWED_HOSTS)")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="an origin whose web pages may call the API (repeatable; "
             "$LLMOS_CORS_ORIGINS)")] = None,
    workers: WorkersOption = None,
) -> None:
    """Run LLMOS in one process, serving the default model on an OpenAI-compatible API."""
    from llmos.server import serve as run_server

    given: dict[str, Any] = {"host": host, "port": port, "bus_url": bus, "home": home,
                             "tls_cert": tls_cert, "tls_key": tls_key,
                             "config": config, "storage_url": storage,
                             "allowed_hosts": allowed_host or None,
                             "cors_origins": cors_origin or None,
                             "gateway_workers": workers}
    if insecure:
        given["insecure"] = True
    if not worker:
        given["embedded_worker"] = False
    engine = {"slots": slots, "threads": threads, "ctx_size": ctx_size}
    _run_with_settings(given, engine,
                       lambda settings: run_server(settings, init_key=init_admin_key))


def _run_with_settings(given: dict[str, Any], engine: dict[str, Any],
                       main: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """Settings from flags (those given) over env and file, then run ``main`` with them."""
    from pydantic import ValidationError

    from llmos.settings import Settings

    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
        overrides = {k: v for k, v in engine.items() if v is not None}
        if overrides:
            settings.engine = settings.engine.model_copy(update=overrides)
        sys.setswitchinterval(settings.switch_interval_us / 1_000_000)
        _run(main(settings))
    except LLMOSError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=2) from None
    except ValidationError as exc:
        for problem in exc.errors(include_url=False):
            where = ".".join(str(p) for p in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            err.print(f"[red]invalid setting[/red] {where + ': ' if where else ''}{message}",
                      markup=True, highlight=False)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        pass


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (it is a dependency; the fallback is for dev trees)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


@app.command("worker")
def worker_command(
    bus: Annotated[str, typer.Option(help="bus URL, e.g. amqp://guest:guest@127.0.0.1:5672/")],
    model: Annotated[str, typer.Option(help="model reference: name, name:tag, name@3")] = (
        "gemma-3-270m"),
    deployment: Annotated[str | None, typer.Option(
        help="deployment (API model id) to serve; default: the model's name")] = None,
    storage: Annotated[str | None, typer.Option(
        help="the registry's storage URL, to pull the model from (default: local store)")
    ] = None,
    home: Annotated[Path | None, typer.Option(help="state directory ($LLMOS_HOME)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    slots: Annotated[int | None, typer.Option(help="parallel slots")] = None,
    threads: Annotated[int | None, typer.Option(help="engine threads")] = None,
    ctx_size: Annotated[int | None, typer.Option(help="total context, split by slots")] = None,
    worker_id: Annotated[str | None, typer.Option(
        help="this worker's id (an agent passes its replica's; default: a random one)")
    ] = None,
    project: Annotated[str, typer.Option(help="project of the model")] = "default",
    control: Annotated[str | None, typer.Option(
        help="a control plane's address, e.g. http://ctl:8000, to join with the join token "
             "in $LLMOS_JOIN_TOKEN before taking requests")] = None,
) -> None:
    """Run one model replica in this process, consuming its deployment's queue on the bus.
    SIGTERM drains it: no new requests, those in flight finish, then it exits. With a
    join token it joins the cluster first, and drains and stops once the token is
    revoked."""
    from llmos.server import run_worker

    if bus.startswith("memory:"):
        err.print("[red]A worker on memory:// is reachable by nobody:[/red] the in-process "
                  "bus lives inside one process. Give the bus your gateways use "
                  "(amqp://, nats://, redis://, kafka://), or run [bold]llmos serve[/bold], "
                  "which has its own worker.")
        raise typer.Exit(code=2)

    given: dict[str, Any] = {"bus_url": bus, "home": home, "config": config,
                             "storage_url": storage}
    engine = {"slots": slots, "threads": threads, "ctx_size": ctx_size}
    _run_with_settings(given, engine,
                       lambda settings: run_worker(settings, model, deployment, worker_id,
                                                   project, control))


@app.command("control")
def control_command(
    bus: Annotated[str, typer.Option(help="bus URL, e.g. amqp://guest:guest@127.0.0.1:5672/")],
    db: Annotated[str, typer.Option(help="state store URL, e.g. "
                                         "postgresql://user@127.0.0.1:5432/llmos")],
    storage: Annotated[str | None, typer.Option(
        help="registry storage URL shared with the nodes (s3://…; default: the local store)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    home: Annotated[Path | None, typer.Option(help="state directory ($LLMOS_HOME)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    insecure: InsecureOption = False,
    init_admin_key: InitAdminKeyOption = False,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    workers: WorkersOption = None,
) -> None:
    """Run a control plane: the OpenAI and management APIs, the registry and the
    controller, with no node of its own. Run several behind a load balancer: one
    controller is active at a time, another takes over within seconds when it stops."""
    from llmos.server import run_control

    given: dict[str, Any] = {"bus_url": bus, "database_url": db, "storage_url": storage,
                             "host": host, "port": port, "home": home, "config": config,
                             "tls_cert": tls_cert, "tls_key": tls_key,
                             "gateway_workers": workers}
    if insecure:
        given["insecure"] = True
    _run_with_settings(given, {}, lambda settings: run_control(settings,
                                                                 init_key=init_admin_key))


@app.command("agent")
def agent_command(
    bus: Annotated[str, typer.Option(help="bus URL, e.g. amqp://guest:guest@127.0.0.1:5672/")],
    name: Annotated[str | None, typer.Option(help="node name (default: the host name)")
                    ] = None,
    labels: Annotated[str | None, typer.Option(help="node labels: k=v,k2=v2")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU cores to offer (default: all)")
                    ] = None,
    memory: Annotated[str | None, typer.Option(
        help="memory to offer, e.g. 3GiB (default: all)")] = None,
    control: Annotated[str | None, typer.Option(
        help="a control plane's address, e.g. http://ctl:8000: the node joins it with the "
             "join token in $LLMOS_JOIN_TOKEN, and pulls the versions it lacks from its "
             "registry API")] = None,
    storage: Annotated[str | None, typer.Option(
        help="registry storage URL shared with the control plane, to pull models from "
             "(instead of --control)")] = None,
    home: Annotated[Path | None, typer.Option(help="state directory: the node's model "
                                                   "cache and worker logs")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    threads: Annotated[int | None, typer.Option(help="default engine threads of its "
                                                     "replicas")] = None,
) -> None:
    """Run this machine as a node: report its capacity and load, and run the replicas the
    controller places here as worker processes (which die with the agent)."""
    from llmos.agent.capacity import parse_size
    from llmos.server import run_agent

    given: dict[str, Any] = {"bus_url": bus, "node_name": name, "storage_url": storage,
                             "home": home, "config": config}
    node_labels: dict[str, str] = {}
    for item in (labels or "").split(","):
        if item.strip():
            key, sep, value = item.strip().partition("=")
            if not sep or not key:
                err.print(f"[red]error:[/red] a label is key=value, not {item!r}")
                raise typer.Exit(code=2)
            node_labels[key] = value
    try:
        offered = parse_size(memory) if memory else None
    except LLMOSError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=2) from None
    _run_with_settings(given, {"threads": threads}, lambda settings: run_agent(
        settings, labels=node_labels, cpus=cpus, memory=offered, control=control))


@app.command()
def chat(
    model: Annotated[str, typer.Option(help="model id")] = "gemma-3-270m",
    url: UrlOption = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per answer")] = 256,
) -> None:
    """Chat with a model interactively; answers stream as they are generated. /help
    inside lists the commands; Ctrl-C stops an answer, Ctrl-D leaves."""
    from llmos.cli.chat import run

    run(server_url(url), model, system, max_tokens, out)


@app.command()
def version(url: UrlOption = None) -> None:
    """Print the version of this client and of the server, if one answers."""
    out.print(f"llmos {__version__}")
    base = server_url(url)
    try:
        response = httpx.get(f"{base}/api/version", headers=auth_headers(), timeout=3)
    except httpx.HTTPError:
        err.print(f"no server answers at {base}")
        raise typer.Exit(code=2) from None
    if response.status_code != 200:
        raise api_error(response)
    out.print(f"server {base}: llmos {response.json().get('version')}")


workers_app = typer.Typer(help="Worker processes: list them, drain or resume one.",
                          no_args_is_help=True)
app.add_typer(workers_app, name="workers")
models_app.command("plan")(plan)
app.add_typer(models_app, name="models")
app.add_typer(deployments_app, name="deployments")
app.add_typer(nodes_app, name="nodes")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.command("whoami")(whoami)
app.command("audit")(audit)
app.command("usage")(usage)
app.add_typer(projects_app, name="projects")
app.command("logs")(logs)
app.command("deploy")(deploy)
app.command("ps")(ps)
app.command("run")(run)
app.command("events")(events)
app.command("rebalance")(rebalance)


@workers_app.command("ls")
def workers_ls(output: OutputOption = None, as_json: JsonOption = False,
               quiet: QuietOption = False, url: UrlOption = None) -> None:
    """The worker processes that sent a heartbeat within two intervals."""
    fmt = chosen(output, as_json)
    workers = call_api("GET", server_url(url), "/api/workers")["data"]
    if not workers and fmt in ("table", "plain") and not quiet:
        err.print("no live workers")
        return
    listing = Listing(("ID", "DEPLOYMENT", "HOST", "PID", "SLOTS", "BUSY", "STATE", "UP",
                       "SEEN"))
    now = time.time()
    for w in workers:
        listing.add(w["id"], w["deployment"], w["host"], str(w["pid"] or "-"),
                    str(w["slots"]), str(w["busy_slots"]), w["state"],
                    age(now - w["started_at"]) if w["started_at"] else "-",
                    f"{age(now - w['last_heartbeat'])} ago")
    show(workers, [listing], fmt, quiet)


@workers_app.command("show")
def workers_show(worker_id: Annotated[str, typer.Argument(
                     help="worker id, or the start of one")],
                 output: OutputOption = None, as_json: JsonOption = False,
                 url: UrlOption = None) -> None:
    """One worker: its process (PID, state directory, version, up since) and engine."""
    fmt = chosen(output, as_json)
    w = call_api("GET", server_url(url), f"/api/workers/{worker_id}")
    if data(w, fmt):
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w["started_at"]))
    out.print(f"[bold]{w['id']}[/bold]  {w['deployment']}  {w['state']}  "
              f"{w['busy_slots']}/{w['slots']} slots busy")
    out.print(f"process {w['pid']} on {w['host']}, llmos {w['version'] or '?'}, up since "
              f"{started}, state directory {w['home'] or '(its server or agent)'}")
    engine = Listing(("SETTING", "VALUE"), title="engine")
    for key, value in w["engine"].items():
        engine.add(key, str(value))
    table(engine, fmt)


@workers_app.command("drain")
def workers_drain(worker_id: Annotated[str, typer.Argument(
                      help="worker id, or the start of one (see ls)")],
                  wait: Annotated[bool, typer.Option(
                      "--wait", help="return once it holds no request (drained)")] = False,
                  timeout: Annotated[float, typer.Option(
                      help="with --wait: give up after this many seconds")] = 600,
                  url: UrlOption = None) -> None:
    """Stop a worker taking new requests; those in flight finish."""
    base = server_url(url)
    accepted = call_api("POST", base, f"/api/workers/{worker_id}/drain")
    full_id = accepted["worker_id"]
    out.print(f"draining {full_id}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            w = call_api("GET", base, f"/api/workers/{full_id}")
        except typer.Exit:  # (gone: it stopped, so it holds nothing)
            out.print(f"{full_id} is gone")
            return
        if w["state"] == "drained":
            out.print(f"{full_id} drained: it holds no request")
            return
        if time.monotonic() > deadline:
            err.print(f"{full_id} still holds {w['busy_slots']} request(s) after {timeout:g} s")
            raise typer.Exit(code=1)
        time.sleep(0.5)


@workers_app.command("resume")
def workers_resume(worker_id: Annotated[str, typer.Argument(
                       help="worker id, or the start of one (see ls)")],
                   url: UrlOption = None) -> None:
    """Let a drained worker take requests again."""
    accepted = call_api("POST", server_url(url), f"/api/workers/{worker_id}/resume")
    out.print(f"resumed {accepted['worker_id']}")


def main() -> None:
    app()
