"""``llmos serve``: everything in one process — gateway, controller, agent and worker.

The inference path still goes gateway -> bus -> worker -> bus -> gateway, so the
same code runs with the worker in another process once the bus is networked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from llmos import heap
from llmos.aio import stop_task
from llmos.errors import ConfigError, LLMOSError
from llmos.settings import Settings

if TYPE_CHECKING:
    from llmos.registry.local import LocalRegistry
    from llmos.registry.manifest import ModelVersion
    from llmos.store import Store

log = logging.getLogger(__name__)


def check_bind(settings: Settings, *, keys_exist: bool) -> None:
    if settings.keys_always_required and not keys_exist:
        raise ConfigError(
            f"refusing to listen on {settings.host} with no API key: every request there "
            "needs one, and none exists yet. Pass --init-admin-key to make the first "
            "(an admin key, written to the state directory), or --insecure to run open "
            "on a network you trust.")


def init_admin_key(settings: Settings, store: Store) -> None:
    """``--init-admin-key``: an admin key, unless a live one exists; its token goes to
    ``admin.key`` in the state directory (mode 0600) and nowhere else."""
    from llmos.auth.roles import Role

    now = time.time()
    live = [k for k in store.keys.list() if k.role == Role.admin.name and k.revoked_at is None
            and (k.expires_at is None or k.expires_at > now)]
    path = settings.home / "admin.key"
    if live:
        log.info("an admin key exists (%s); --init-admin-key made none", live[0].id)
        return
    row, token = store.keys.create("admin", Role.admin, "default", now=now)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    log.warning("made admin key %s; its token is in %s (shown nowhere else): "
                "export LLMOS_API_KEY=$(cat %s)", row.id, path, path)


def say_how_it_is_guarded(settings: Settings, keys_exist: bool) -> None:
    where = f"{settings.host}:{settings.port}"
    if keys_exist or settings.keys_always_required:
        log.info("every request to %s needs an API key (but /healthz and /readyz)", where)
    else:
        log.warning("running open on %s: no API key exists, so anyone who reaches this "
                    "address may use everything. `llmos keys create NAME --role admin` "
                    "makes one; from then on every request needs a key.", where)


async def serve(settings: Settings, *, deploy_default: bool = True,
                init_key: bool = False) -> None:
    from llmos.agent.capacity import detect
    from llmos.agent.node import NodeAgent
    from llmos.agent.runner import InProcessRunner
    from llmos.bus import open_bus
    from llmos.controller.reconcile import Controller
    from llmos.deployments import deploy
    from llmos.gateway.app import create_app
    from llmos.gateway.siblings import Siblings, check_workers, is_sibling, reuse_port_socket
    from llmos.observability.logs import configure_logging
    from llmos.registry.defaults import DEFAULT_MODEL_NAME, ensure_default_model, open_registry
    from llmos.store import Store

    settings.home.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.log_level, json_logs=settings.log_json,
                      log_dir=settings.logs_dir)
    if is_sibling():
        await _serve_gateway(settings, control_plane=not deploy_default)
        return
    check_workers(settings.gateway_workers, settings.bus_url)
    store = Store(settings.db_url)
    await asyncio.to_thread(store.migrate)
    if init_key:
        await asyncio.to_thread(init_admin_key, settings, store)
    keys_exist = (await asyncio.to_thread(store.keys.stamp))[0] > 0
    check_bind(settings, keys_exist=keys_exist)
    say_how_it_is_guarded(settings, keys_exist)
    registry = open_registry(settings)
    bus = open_bus(settings.bus_url)
    await bus.connect()
    # the embedded node: one agent running replicas in this process, heeding this store's
    # cluster only (another control plane on the same bus has a store of its own)
    cluster = await asyncio.to_thread(store.facts.cluster_id)
    agent = NodeAgent(bus, settings.node_name, InProcessRunner(bus, registry, settings.engine),
                      detect(), cluster=cluster)
    controller = Controller(store, registry, bus, settings.engine)
    app = create_app(settings, bus, store, registry, control_plane=not deploy_default)
    server = _server_class()(_uvicorn_config(app, settings))
    sockets = None
    siblings = Siblings(settings.gateway_workers - 1)
    if siblings.count:
        sockets = [reuse_port_socket(settings.host, settings.port)]
    serving = asyncio.create_task(server.serve(sockets=sockets), name="uvicorn")
    gateways = asyncio.create_task(siblings.run(), name="gateway-processes") \
        if siblings.count else None
    reconciling: asyncio.Task[None] | None = None
    try:
        if settings.default_model == DEFAULT_MODEL_NAME:
            await asyncio.to_thread(ensure_default_model, registry)
        if deploy_default and settings.default_model:
            # Each start deploys the default model again: a new "latest" is picked up
            # here, and only here (a running deployment stays on the version it pinned).
            await asyncio.to_thread(deploy, store, registry, settings.default_model,
                                    settings.default_model)
        if settings.embedded_worker:
            await agent.start()
        reconciling = asyncio.create_task(controller.run(), name="controller")
        heap.settle()
        await serving
    finally:
        if reconciling is not None:
            await stop_task(reconciling)
        if gateways is not None:
            await siblings.stop()
            await stop_task(gateways)
        if not serving.done():
            server.should_exit = True
            await serving
        await agent.stop()
        await bus.close()
        store.close()
        log.info("stopped")


def _uvicorn_config(app: Any, settings: Settings) -> Any:
    import uvicorn

    from llmos.gateway.protocol import JsonErrorsHttpToolsProtocol

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        http=JsonErrorsHttpToolsProtocol,
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
        lifespan="on", timeout_graceful_shutdown=5)


async def _serve_gateway(settings: Settings, *, control_plane: bool) -> None:
    """One of the extra gateway processes of ``--workers N``: the API only, on the first
    process's address (see gateway/siblings.py); ready when the first one would be (under
    ``serve``, once the default model answers through it)."""
    from llmos.bus import open_bus
    from llmos.gateway.app import create_app
    from llmos.gateway.siblings import leave_with_parent, reuse_port_socket
    from llmos.registry.defaults import open_registry
    from llmos.store import Store

    store = Store(settings.db_url)
    bus = open_bus(settings.bus_url)
    await bus.connect()
    try:
        app = create_app(settings, bus, store, open_registry(settings),
                         control_plane=control_plane)
        server = _server_class()(_uvicorn_config(app, settings))

        def stop() -> None:
            server.should_exit = True

        watch = asyncio.create_task(leave_with_parent(stop), name="parent-watch")
        heap.settle()
        try:
            await server.serve(sockets=[reuse_port_socket(settings.host, settings.port)])
        finally:
            watch.cancel()
    finally:
        await bus.close()
        store.close()


def _server_class() -> type[Any]:
    from llmos.gateway.http_server import Server

    return Server


_PIN_LEASE_S = 900.0


async def _hold_pin(registry: LocalRegistry, version: ModelVersion, holder: str) -> None:
    """Pin the version this replica runs, renewing the lease while it runs (a registry
    that cannot be reached for a while costs a warning, not the replica)."""
    quiet = False
    while True:
        try:
            await asyncio.to_thread(registry.pins.pin, version, holder,
                                    lease_s=_PIN_LEASE_S, quiet=quiet)
            quiet = True
        except LLMOSError as exc:
            log.warning("could not pin %s: %s", version.ref, exc.message)
        await asyncio.sleep(_PIN_LEASE_S / 3)


def _unpin(registry: LocalRegistry, version: ModelVersion, holder: str) -> None:
    try:
        registry.pins.unpin(version, holder)
    except LLMOSError as exc:  # the lease runs out by itself
        log.warning("could not unpin %s: %s", version.ref, exc.message)


def _join_token(settings: Settings, control: str | None) -> str | None:
    """The join token to present, if any (it goes with a control plane to present to)."""
    if settings.join_token is None:
        return None
    if not control:
        raise ConfigError("a join token is presented to a control plane: give --control "
                          "(e.g. --control http://ctl:8000)")
    return settings.join_token.get_secret_value()


async def run_worker(settings: Settings, model: str, deployment: str | None = None,
                     worker_id: str | None = None, project: str = "default",
                     control: str | None = None) -> None:
    """``llmos worker``: one replica of ``model`` in this process. SIGTERM drains it (no new
    requests, those in flight finish), then it exits; a second SIGTERM or SIGINT stops
    it at once (requests in flight go back to the queue). With a join token it first
    joins the cluster at ``control``, and drains and stops once the token is revoked."""
    import signal
    import uuid

    from llmos.agent.join import JoinRefused, join, stay_joined
    from llmos.agent.runner import DRAIN_S, drain_and_stop, engine_config
    from llmos.bus import names, open_bus
    from llmos.capabilities import engine_for
    from llmos.engines import load_engine
    from llmos.observability.logs import configure_logging
    from llmos.observability.telemetry import BusLogHandler, TelemetryPublisher
    from llmos.registry.defaults import DEFAULT_MODEL_NAME, ensure_default_model, open_registry
    from llmos.registry.refs import parse_ref
    from llmos.worker.worker import Worker

    configure_logging(settings.log_level, json_logs=settings.log_json)
    ref = parse_ref(model)
    token = _join_token(settings, control)
    worker_id = worker_id or uuid.uuid4().hex[:12]
    if token is not None and control:
        await asyncio.to_thread(join, control, token, worker_id, "worker")
    bus = open_bus(settings.bus_url)  # first, so a wrong URL fails before any slow work
    await bus.connect()
    registry = open_registry(settings)
    if ref.name == DEFAULT_MODEL_NAME:
        await asyncio.to_thread(ensure_default_model, registry, project=project)
    version = registry.catalog.get(ref, project=project)
    config = await asyncio.to_thread(engine_config, settings.engine, registry, version)
    engine = await asyncio.to_thread(
        load_engine, engine_for((version.config or {}).get("format")), config)
    worker = Worker(bus, engine, names.bus_name(deployment or ref.name, project),
                    worker_id=worker_id, home=str(settings.home))
    holder = f"worker {worker.worker_id} on {socket.gethostname()} (pid {os.getpid()})"
    lease = asyncio.create_task(_hold_pin(registry, version, holder), name="pin-lease")
    signals: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # This process's warnings and errors also go to the gateways, over the bus.
    log_events = TelemetryPublisher(bus, names.LOG_EVENTS_TOPIC)
    log_events.start()
    log_handler = BusLogHandler(log_events, worker.worker_id, loop)
    logging.getLogger().addHandler(log_handler)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig.name)
    refused: list[JoinRefused] = []
    joined = None
    if token is not None and control:
        def on_refused(exc: JoinRefused) -> None:
            refused.append(exc)
            signals.put_nowait("SIGTERM")  # drain: no new requests, those in flight finish
        joined = asyncio.create_task(stay_joined(control, token, on_refused), name="join")
    try:
        await worker.start()
        heap.settle()
        first = await signals.get()
        if first == "SIGTERM":
            log.info("draining: no new requests; those in flight finish")
            draining = asyncio.create_task(drain_and_stop(worker, DRAIN_S))
            again = asyncio.create_task(signals.get())
            await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
            again.cancel()
        log.info("stopping: requests in flight go back to the queue")
    finally:
        for task in (lease, joined):
            if task is not None:
                await stop_task(task)
        await asyncio.to_thread(_unpin, registry, version, holder)
        await worker.stop()
        logging.getLogger().removeHandler(log_handler)
        await log_events.stop()
        await asyncio.to_thread(engine.close)
        await bus.close()
    if refused:
        raise refused[0]


async def run_agent(settings: Settings, *, labels: dict[str, str], cpus: float | None,
                    memory: int | None, control: str | None = None) -> None:
    """``llmos agent``: this machine as a node of the cluster, its replicas as worker
    processes, until SIGTERM or SIGINT (which drain them)."""
    import signal

    from llmos.agent.capacity import detect
    from llmos.agent.join import JoinRefused, join, stay_joined
    from llmos.agent.node import NodeAgent
    from llmos.agent.process import ProcessRunner
    from llmos.bus import open_bus
    from llmos.observability.logs import configure_logging

    configure_logging(settings.log_level, json_logs=settings.log_json,
                      log_dir=settings.logs_dir)
    settings.home.mkdir(parents=True, exist_ok=True)
    token = _join_token(settings, control)
    cluster = None  # (without a join: the first cluster whose assignment comes)
    if token is not None and control:
        joined_as = await asyncio.to_thread(join, control, token, settings.node_name, "agent")
        cluster = joined_as.get("cluster")
    bus = open_bus(settings.bus_url)
    await bus.connect()
    cache = None
    if control:
        from llmos.agent.cache import NodeCache
        from llmos.registry.local import LocalRegistry

        key = token or (settings.api_key.get_secret_value() if settings.api_key else None)
        cache = NodeCache(LocalRegistry(settings.models_dir), control, api_key=key)
    runner = ProcessRunner(bus, settings, cache=cache)
    await runner.open()
    agent = NodeAgent(bus, settings.node_name, runner, detect(cpus, memory), labels=labels,
                      cluster=cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    refused: list[JoinRefused] = []
    joined = None
    if token is not None and control:
        def on_refused(exc: JoinRefused) -> None:
            refused.append(exc)
            stop.set()
        joined = asyncio.create_task(stay_joined(control, token, on_refused), name="join")
    try:
        await agent.start()
        await stop.wait()
        log.info("agent stopping: its replicas drain")
    finally:
        if joined is not None:
            await stop_task(joined)
        await agent.stop()
        await bus.close()
    if refused:
        raise refused[0]


async def run_control(settings: Settings, *, init_key: bool = False) -> None:
    """``llmos control``: the control plane (API, registry, controller) without a node of
    its own. Several may run: one controller is active (the lease holder)."""
    settings = settings.model_copy(update={"embedded_worker": False})
    await serve(settings, deploy_default=False, init_key=init_key)
