"""A remote provider's model as a registry version: one ``remote.json`` that names an
OpenAI-compatible endpoint, the model there, and where a worker finds the API key (an
environment variable, or a file such as a mounted secret; never the key itself).

Read by the registry (which checks the file when a version is made), and by the
``remote`` engine, which calls the endpoint from inside a worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmos.errors import BadRequest, ConfigError

FILENAME = "remote.json"
FORMAT = "remote"

OPENAI_PARAMETERS = frozenset({
    "messages", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "user"})
"""What goes upstream of a request's engine body; others (llama.cpp's ``top_k``,
``min_p``…) only when the spec's ``forward`` names them."""


class RemoteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="the endpoint's API root, e.g. https://api.openai.com/v1")
    model: str = Field(min_length=1, max_length=256, description="the model's name there")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
                                    description="the environment variable holding the key")
    api_key_file: str | None = Field(None, max_length=4096,
                                     description="a file holding the key (a mounted secret)")
    forward: tuple[str, ...] = Field((), description="more parameters to send upstream")
    max_retries: int = Field(4, ge=0, le=10, description="tries again on 429, 5xx and "
                             "refused connections before the first token")
    connect_timeout_s: float = Field(10.0, gt=0, le=300)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if "@" in value.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("base_url must not carry credentials (use api_key_env)")
        return value.rstrip("/")

    def api_key(self) -> str | None:
        """The key, read where the spec says (on the worker's machine)."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"the remote model needs its API key in the environment "
                                  f"variable {self.api_key_env}, which is not set here")
            return key
        if self.api_key_file:
            try:
                return Path(self.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"the remote model's API key file {self.api_key_file} "
                                  f"cannot be read: {exc.strerror}") from None
        return None


def parse(content: bytes) -> RemoteSpec:
    """The spec in ``content``, or a 400 that says what is wrong with it."""
    try:
        return RemoteSpec.model_validate(json.loads(content))
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the file"
            detail = f"{where}: {first['msg']}"
        else:
            detail = "not JSON"
        raise BadRequest(f"{FILENAME} is not a remote model's spec ({detail})",
                         param="files") from None


def is_remote(filenames: list[str]) -> bool:
    return filenames == [FILENAME]
