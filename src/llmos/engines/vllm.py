"""vLLM on this node's GPU: its OpenAI-compatible server in a child process (bound to
127.0.0.1, with a random key), spoken to through the remote engine's client, so the
streaming, stopping and error handling are one code.

Used for versions of the ``transformers`` format (a Hugging Face folder: ``config.json``
and ``*.safetensors``), where vLLM is installed and a GPU is present (``available``).
Where either is missing, such a replica fails at once, saying which; GGUF models stay
on llama.cpp. Placement asks one GPU per replica (``controller/estimates.py``), so the
scheduler puts these replicas only on nodes that have one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import httpx

from llmos import providers
from llmos.engines.base import EngineConfig
from llmos.engines.remote import RemoteEngine
from llmos.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

START_S = 900.0
"""The longest a vLLM server may take to load its model and answer /health."""
SERVED_NAME = "llmos"
FORWARDED = ("top_k", "min_p", "ignore_eos", "repetition_penalty")


def available() -> tuple[bool, str]:
    """Whether this machine can run the vLLM engine, and why not."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vLLM is not installed (pip install vllm, on a machine with a GPU)"
    from llmos.agent.capacity import gpu_count

    if gpu_count() == 0:
        return False, "no NVIDIA GPU is visible (NVML finds none)"
    return True, "vLLM is installed and a GPU is visible"


def command(config: EngineConfig, port: int, key: str, template: Path | None) -> list[str]:
    """The vLLM server's command line for ``config`` (kept pure for tests)."""
    folder = config.model_path if config.model_path.is_dir() else config.model_path.parent
    args = [str(Path(sys.executable).parent / "vllm"), "serve", str(folder),
            "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--api-key", key,
            "--max-num-seqs", str(config.slots)]
    if config.ctx_size:
        args += ["--max-model-len", str(config.ctx_size)]
    if config.embedding:
        args += ["--runner", "pooling", "--convert", "embed"]
    if template is not None:
        args += ["--chat-template", str(template)]
    return args


class VllmEngine(RemoteEngine):
    def __init__(self, config: EngineConfig) -> None:
        ok, why = available()
        if not ok:
            raise ConfigError(f"the vllm engine cannot run here: {why}")
        key = secrets.token_urlsafe(24)
        port = _free_port()
        self._template: Path | None = None
        if config.chat_template:
            handle, name = tempfile.mkstemp(suffix=".jinja")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(config.chat_template)
            self._template = Path(name)
        self._process = subprocess.Popen(
            command(config, port, key, self._template), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        self._output: deque[str] = deque(maxlen=40)
        try:
            self._wait_healthy(port, key)
        except BaseException:
            self._stop_process()
            raise
        spec = providers.RemoteSpec(base_url=f"http://127.0.0.1:{port}/v1", model=SERVED_NAME,
                                    forward=FORWARDED, max_retries=0)
        self._connect(config, spec, key)

    def _wait_healthy(self, port: int, key: str) -> None:
        assert self._process.stdout is not None
        stdout = self._process.stdout

        def drain() -> None:  # keep its pipe empty; its last lines explain a failure
            for line in stdout:
                self._output.append(line.rstrip())
                log.debug("vllm: %s", line.rstrip())

        threading.Thread(target=drain, name="vllm-output", daemon=True).start()
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EngineError(f"vLLM exited with {self._process.returncode} while "
                                  "loading: " + " | ".join(list(self._output)[-8:]))
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2,
                             headers={"authorization": f"Bearer {key}"}).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise EngineError(f"vLLM did not answer /health within {START_S:g} s")

    def _stop_process(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        if self._template is not None:
            self._template.unlink(missing_ok=True)

    def close(self) -> None:
        super().close()
        self._stop_process()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
