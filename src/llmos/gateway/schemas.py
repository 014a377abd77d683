"""OpenAI-compatible request bodies, validated strictly: nothing is silently ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmos.bus.names import Tier


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is json_schema")
        return self


# Parameters of the OpenAI API that the engine cannot honour (yet). A request that sets
# one to anything but its neutral value is answered 400 naming it.
UNSUPPORTED: dict[str, Any] = {
    "tools": None, "tool_choice": None, "functions": None, "function_call": None,
    "parallel_tool_calls": None, "logprobs": (None, False), "top_logprobs": None,
    "audio": None, "modalities": None, "prediction": None,
    "store": (None, False), "reasoning_effort": None, "web_search_options": None,
    "echo": (None, False), "best_of": (None, 1), "suffix": None, "metadata": None,
}


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = Field(
        None, description="llama.cpp extension: keep generating past end-of-sequence")
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = Field(
        None, description="queue class: `priority` is served before `default`, `flex` after; "
        "`auto` is `default`")
    # accepted so they can be refused by name instead of as "extra fields"
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    store: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    metadata: Any = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values are between -100 and 100")
        return value

    def unsupported(self) -> str | None:
        """The first parameter set to something the engine cannot honour, if any."""
        if self.n is not None and self.n != 1:
            return "n"
        for name, neutral in UNSUPPORTED.items():
            value = getattr(self, name, None)
            allowed = neutral if isinstance(neutral, tuple) else (neutral,)
            if value not in allowed:
                return name
        return None

    def tier(self) -> Tier:
        if self.service_tier == "priority" or self.service_tier == "flex":
            return self.service_tier
        return "default"

    def sampling(self) -> dict[str, Any]:
        fields = ("temperature", "top_p", "top_k", "min_p", "stop", "seed",
                  "presence_penalty", "frequency_penalty", "logit_bias", "ignore_eos")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class ChatCompletionCreate(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionCreate(_Sampling):
    prompt: str | list[str] | list[int]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported (batch prompts: "
                                 "send one request each)")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class UsagePublic(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessagePublic(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessagePublic
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsagePublic


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsagePublic


class Health(BaseModel):
    status: str
    version: str
    detail: str | None = None
