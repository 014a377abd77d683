"""OpenAI-compatible request bodies, validated strictly: nothing is silently ignored."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmos.bus.names import Tier


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str = Field(description="the arguments as a JSON text")


class ToolCall(_Strict):
    """A tool call an assistant message made (sent back in the conversation)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="assistant messages: the "
                                              "tool calls it made")
    tool_call_id: str | None = Field(None, description="tool messages: the call answered")

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry a tool_call_id")
        return self

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


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="the arguments' JSON schema (none: the function takes none)")
    strict: bool | None = Field(None, description="accepted; with `tool_choice` "
                                "`required` or a named function the arguments always follow "
                                "the schema")


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


ResponseFormat = Annotated[ResponseFormatText | ResponseFormatJsonObject
                           | ResponseFormatJsonSchema, Field(discriminator="type")]


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
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")],
                     Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, description="token id -> bias")
    ignore_eos: bool | None = Field(
        None, description="llama.cpp extension: keep generating past end-of-sequence")
    n: int | None = Field(None, ge=1, description="choices: each its own generation "
                          "(with `seed`, choice i samples with seed + i)")
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

    HONOURED: ClassVar[frozenset[str]] = frozenset()
    """Names in ``UNSUPPORTED`` this endpoint does honour."""

    def unsupported(self) -> str | None:
        """The first parameter set to something the engine cannot honour, if any."""
        for name, neutral in UNSUPPORTED.items():
            if name in self.HONOURED:
                continue
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
    HONOURED = frozenset({"logprobs", "top_logprobs", "tools", "tool_choice",
                          "parallel_tool_calls"})
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDefinition] | None = Field(None, description="functions the model may "
                                               "call")
    tool_choice: ToolChoice | None = Field(
        None, description="`auto` (the default with tools): the model decides; `none`: no "
        "call; `required`: one call, its arguments following the function's schema; a named "
        "function: a call of that one")
    parallel_tool_calls: bool | None = Field(None, description="with `auto`: whether one "
                                             "answer may make several calls (default true)")
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = Field(None, description="each token's log probability")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with `logprobs`: "
                                     "this many most likely tokens at each position")

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionCreate:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools or ()]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionCreate(_Sampling):
    prompt: (str | Annotated[list[str], Field(min_length=1, max_length=1)]
             | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]) = Field(
        description="a text, a list of one text (one prompt per request: send a batch as "
        "separate requests), or token ids")
    HONOURED = frozenset({"logprobs", "echo"})
    echo: bool | None = Field(None, description="put the prompt before the generated text "
                              "(a text prompt, without logprobs)")
    logprobs: int | None = Field(None, ge=0, le=5, description="the log probabilities "
                                 "of each token and of this many most likely ones")
    # accepted so they can be refused by name (``UNSUPPORTED``)
    best_of: Any = None
    suffix: Any = None

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
    capabilities: list[str] = Field(default_factory=list, description="what it serves: "
                                    "chat, completions, tools, embeddings")
    engine: str | None = None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingCreate(_Strict):
    model: str
    input: (Annotated[str, Field(min_length=1)]
            | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
            | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]) = Field(
        description="a text, a list of texts, token ids, or a list of token-id lists")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="floats, or base64 of little-endian float32")
    dimensions: int | None = Field(None, ge=1, description="a shorter embedding, where "
                                   "the model was trained for it")
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        given = self.input
        if isinstance(given, str):
            return [given]
        if all(isinstance(i, int) for i in given):
            return [list(given)]  # type: ignore[arg-type]
        return list(given)  # type: ignore[arg-type]


class EmbeddingPublic(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingPublic]
    model: str
    usage: EmbeddingUsage


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class UsagePublic(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallPublic(BaseModel):
    name: str
    arguments: str


class ToolCallPublic(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallPublic


class ChatMessagePublic(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallPublic] | None = None


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
    served: dict[str, list[str]] | None = None
    """(``/readyz``) each deployment ``/v1/models`` lists: the ids of the live workers
    taking its requests (``/api/workers``)."""
    gateway: str | None = None
    """(``/readyz``) the id of the gateway process that answered (one of several with
    ``--workers N``): its reply queue is ``llmos.reply.<id>``."""


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaPublic(BaseModel):
    """A piece of a tool call: the first of each call has its ``id``, ``type`` and
    ``function.name``; every piece's ``function.arguments`` is appended."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaPublic] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed chat completion (the last carries ``usage`` when
    asked, with no choices); the stream ends with ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsagePublic | None = None


class CompletionChunk(BaseModel):
    """One ``data:`` event of a streamed completion; the stream ends with
    ``data: [DONE]``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsagePublic | None = None
