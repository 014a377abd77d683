"""Settings: one class, read from LLMOS_* variables, an optional TOML file and CLI flags.

Precedence, highest first: CLI flags (passed as init arguments), environment
variables, the config file (``--config`` or ``LLMOS_CONFIG``), defaults.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _hostname() -> str:
    import socket

    return socket.gethostname() or "local"


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class SamplingDefaults(BaseModel):
    """Sampling a request gets for what it leaves unset (unset here: llama.cpp's defaults)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    def given(self) -> dict[str, float | int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class EngineOptions(BaseModel):
    """How an engine loads a model and runs requests: each such setting, defined once.

    ``EngineSettings`` (what an operator sets, per model) adds what the gateway applies to
    requests; ``EngineConfig`` (``engines/base.py``, what an engine is loaded with) adds
    the model's path and its chat template's text."""

    slots: int = Field(8, ge=1, le=256, description="parallel sequences (continuous batching)")
    threads: int = Field(default_factory=_default_threads, ge=1, description="generation threads")
    batch_threads: int | None = Field(None, ge=1, description="prompt threads (default: threads)")
    ctx_size: int = Field(8192, ge=0, description="total KV context, split across slots (0: "
                          "the engine decides: the model's own context length)")
    kv_unified: bool = Field(False, description="share one KV cache across slots")
    batch_size: int = Field(
        512, ge=16, description="prompt tokens one engine step processes (llama.cpp's n_batch "
        "and n_ubatch): a long prompt is prefilled in steps of this size, so a cancelled "
        "request stops within one step and other requests' tokens come between steps")
    cache_ram_mib: int = Field(256, ge=0, description="host-side prompt cache")
    poll: int = Field(50, ge=0, le=100, description="busy-wait level of engine threads")
    log_verbosity: int = Field(0, ge=-1, le=5, description="llama.cpp log level (0: quiet)")
    merge_max_tokens: int = Field(
        512, ge=0, description="completions that arrive together with the same parameters "
        "start as one engine call (one prefill batch) when max_tokens is at most this; "
        "0 turns it off. When a member stops (its client gone), the call ends and the "
        "others go on alone from the text they have sent")
    embedding: bool = Field(
        False, description="serve embeddings (/v1/embeddings) instead of generating: "
        "llama.cpp's embedding mode")
    pooling: Literal["mean", "cls", "last"] = Field(
        "mean", description="how an embedding is pooled from the tokens' states")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=100, description="embedding requests that arrive within this many "
        "milliseconds of the first of a batch are embedded together (up to `slots`)")

    @property
    def ctx_per_slot(self) -> int | None:
        """Tokens one request can hold, or None when the engine decides (ctx_size 0)."""
        if self.ctx_size == 0:
            return None
        return self.ctx_size if self.kv_unified else self.ctx_size // self.slots

    def options(self) -> dict[str, Any]:
        """These settings' engine options alone (to load an engine with)."""
        return {name: getattr(self, name) for name in EngineOptions.model_fields}


class EngineSettings(EngineOptions):
    """Per-model engine settings; the defaults suit a small CPU machine."""

    sampling: SamplingDefaults = Field(default_factory=lambda: SamplingDefaults())
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request has none")
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request may ask")
    chat_template: str | None = Field(
        None, description="the chat template: a built-in (gemma, chatml) or a Jinja "
        "template; default: the model version's own (see docs/models.md)")
    embedding_dimensions: list[int] = Field(
        default_factory=list, description="the shorter sizes the embedding model was "
        "trained to be cut to (Matryoshka); a request's `dimensions` must be one of them")

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        from llmos.errors import BadRequest
        from llmos.registry.templates import check_override

        try:
            return check_override(value) if value else None
        except BadRequest as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(exc.message) from None

    def overlay(self, given: Mapping[str, Any]) -> EngineSettings:
        """These settings with what a deployment sets over them (validated)."""
        if not given:
            return self
        return EngineSettings.model_validate(self.model_dump() | dict(given))


class RequestLimits(BaseModel):
    """What one request may ask for: every request's cost is bounded before it reaches an
    engine. A request over a limit gets a 400 (413 for the body) naming the setting."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest JSON request body (blob uploads "
        "stream and are not limited by it)")
    max_messages: int = Field(2048, ge=1, description="messages in one chat request")
    max_content_parts: int = Field(256, ge=1, description="content parts in one message")
    max_stop: int = Field(4, ge=0, le=64, description="stop sequences in one request")
    max_stop_chars: int = Field(256, ge=1, description="characters in one stop sequence")
    max_logit_bias: int = Field(300, ge=0, description="logit_bias entries (OpenAI: 300)")
    max_tools: int = Field(128, ge=0, description="tool definitions in one request")
    max_embedding_inputs: int = Field(2048, ge=1, description="inputs in one embeddings "
                                      "request (OpenAI: 2048)")
    max_choices: int = Field(8, ge=1, le=128, description="`n`: choices one request may "
                             "ask for (each is its own generation in a slot)")
    max_name_chars: int = Field(
        256, ge=1, description="characters in a model id, message name, user or tool name")
    max_schema_bytes: int = Field(
        64 * 1024, ge=256, description="size of a response_format JSON schema (it is "
        "compiled into a grammar)")
    no_replica_wait_s: float = Field(
        3.0, ge=0, le=60, description="how long a request for a deployment with no live, "
        "undrained replica waits for one before it gets a 503 with Retry-After")
    starting_replica_wait_s: float = Field(
        60.0, ge=0, le=3600, description="how long such a request waits instead when the "
        "deployment is placed and its replicas are starting (a model loading)")


_ACK_MARGIN_S = 60.0
"""Time a worker needs after a request's deadline to stop, publish its end and ack."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMOS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".llmos")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    insecure: bool = Field(
        False, description="on a non-loopback address, run open (no API key needed) while "
        "no key exists; only on a network you trust")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="host names the server answers to besides "
        "loopback names, IP addresses and the bind address ('*': any; a DNS-rebinding page "
        "sends its own name)")
    tls_cert: Path | None = Field(None, description="the gateway's TLS certificate (PEM, "
                                  "with its chain): it serves https")
    tls_key: Path | None = Field(None, description="the private key of tls_cert (PEM)")
    cors_origins: list[str] = Field(
        default_factory=list, description="origins (scheme://host:port) whose pages may call "
        "the API from a browser ('*': any); every other cross-origin request is refused")
    limits: RequestLimits = Field(default_factory=lambda: RequestLimits())
    bus_url: str = "memory://"
    database_url: str | None = None
    counters_url: str | None = Field(
        None, description="redis:// or rediss://: where the gateways share the counts their "
        "rate limits and quotas read (default: the state store)")
    api_key: SecretStr | None = Field(
        None, description="the API key a node (llmos agent) sends to the control plane "
        "it pulls models from, when it has no join_token ($LLMOS_API_KEY)")
    join_token: SecretStr | None = Field(
        None, description="the join token (a key with the node role) an agent or worker "
        "presents to its control plane (--control) before it takes work, and pulls models "
        "with ($LLMOS_JOIN_TOKEN)")
    storage_url: str | None = Field(
        None, description="where the registry keeps manifests and blobs: s3://, az://, gs://, "
        "file:// (default: the local store under home/models, no object storage)")
    default_model: str = Field("gemma-3-270m", description="the model serve deploys at "
                               "start (empty: none; deploy models with `llmos deploy`)")
    gateway_workers: int = Field(
        1, ge=1, le=64, description="gateway processes answering on the API's address "
        "(each with its own event loop, bus connection and reply queue); above 1 needs a "
        "networked bus")
    prefix_routing: bool = Field(
        True, description="send a request whose prompt prefix a replica holds in its prompt "
        "cache to that replica, while it has a free slot (else the shared queue)")
    prefix_min_chars: int = Field(
        1024, ge=0, description="prefix-aware routing: the shortest shared prefix "
        "(characters of the request's messages or prompt) worth a detour")
    embedded_worker: bool = Field(
        True, description="serve runs an embedded node (agent) whose replicas run in its "
        "own process")
    node_name: str = Field(default_factory=_hostname, description="this machine's node "
                           "name in the cluster (the embedded node's, under serve)")
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())
    request_timeout_s: float = Field(600.0, gt=0, description="end-to-end deadline")
    bus_consumer_timeout_s: float = Field(
        1800.0, gt=0, description="the broker's limit on how long a delivery may stay "
        "unacked (RabbitMQ's consumer_timeout, 30 min by default)")
    switch_interval_us: int = Field(
        200, ge=1, le=100_000, description="how long one Python thread may hold the GIL "
        "while others wait for it (CPython's default is 5000); engine threads wait for it to "
        "start a request and to hand over each token, so a burst of requests reaches the "
        "engine within a few milliseconds instead of one switch interval per request")
    log_level: str = "INFO"
    log_json: bool | None = Field(None, description="logs on stderr as JSON lines (true), "
                                  "as text (false), or text on a terminal and JSON "
                                  "otherwise (unset); the log file is always JSON")
    config: Path | None = Field(None, description="TOML file with these settings")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = _config_path(init_settings)
        if config_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _generation_fits_the_consumer_timeout(self) -> Settings:
        # A worker acks a request after its last chunk, and stops generating at the
        # request's deadline; a deadline beyond the broker's consumer timeout would let
        # the broker close the worker's channel under a long generation.
        if self.request_timeout_s + _ACK_MARGIN_S > self.bus_consumer_timeout_s:
            raise ValueError(
                f"request_timeout_s ({self.request_timeout_s:g}s) must be at least "
                f"{_ACK_MARGIN_S:g}s below bus_consumer_timeout_s "
                f"({self.bus_consumer_timeout_s:g}s): a generation may not outlive the "
                "broker's consumer timeout. Lower the request timeout, or raise the broker's "
                "consumer_timeout and bus_consumer_timeout_s with it")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'llmos.db'}"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @model_validator(mode="after")
    def _tls_in_pairs(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both, or neither")
        return self

    @property
    def keys_always_required(self) -> bool:
        """Requests need an API key even before one exists: the server listens beyond
        loopback and was not told the network is trusted (``insecure``)."""
        return not is_loopback(self.host) and not self.insecure

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


def _config_path(init_settings: PydanticBaseSettingsSource) -> Path | None:
    given: Any = init_settings().get("config") or os.environ.get("LLMOS_CONFIG")
    if not given:
        return None
    path = Path(given).expanduser()
    if not path.is_file():
        from llmos.errors import ConfigError

        raise ConfigError(f"config file {path} does not exist")
    return path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
