"""A controller places on and orders only the nodes that heed its own cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmos.bus import TopicMessage
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import NodeStatus, encode
from llmos.controller.reconcile import Controller
from llmos.registry.defaults import open_registry
from llmos.settings import Settings
from llmos.store import Store


def status(node: str, cluster: str) -> TopicMessage:
    return TopicMessage(encode(NodeStatus(node=node, epoch="e", cpus=2, memory=1 << 30,
                                          sent_at=time.time(), interval_s=2.0,
                                          cluster=cluster)))


@pytest.mark.asyncio
async def test_nodes_of_another_cluster_are_left_alone(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    bus = MemoryBus()
    await bus.connect()
    controller = Controller(store, open_registry(settings), bus, settings.engine)
    await controller.start()  # (it knows its cluster before any heartbeat comes)
    ours = store.facts.cluster_id()
    assert controller.cluster == ours
    await controller._on_status(status("mine", ours))
    await controller._on_status(status("new", ""))  # (has heard no order yet)
    await controller._on_status(status("theirs", "f00d"))
    assert {h.status.node for h in controller.directory.all()} == {"mine", "new"}
    orders = controller._assignments([], {}, term=1, now=time.time())
    assert {o.node for o in orders} == {"mine", "new"}
    assert {o.cluster for o in orders} == {ours}
    await controller.stop()
    await bus.close()
    store.close()
