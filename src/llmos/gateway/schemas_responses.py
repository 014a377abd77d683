"""The Responses API's request body (``POST /v1/responses``), validated strictly: the
subset for text and function calls, each parameter outside it refused by name."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmos.gateway.schemas import TextPart


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class InputMessage(_Strict):
    """A message: the client's, or an output message of an earlier response sent back."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Strict):
    """A function call of an earlier response, sent back with its result."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutput(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText | TextPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


InputItem = Annotated[InputMessage | FunctionCallItem | FunctionCallOutput,
                      Field(union_mode="left_to_right")]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(_Strict):
    type: Literal["function"]
    name: str


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJsonObject(_Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema,
                      Field(discriminator="type")] | None = None
    verbosity: Literal["medium"] | None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None


# Parameters outside the subset: a request that sets one to anything but its neutral
# value is answered 400 naming it.
UNSUPPORTED: dict[str, Any] = {
    "previous_response_id": None, "conversation": None, "background": (None, False),
    "reasoning": None, "include": (None, []), "top_logprobs": (None, 0), "prompt": None,
    "max_tool_calls": None, "context_management": None, "truncation": (None, "disabled"),
    "store": (None, False),
}

NOT_STORED = ("responses are not stored (every response is `store: false`): send the "
              "whole conversation in `input`, the earlier output items included")


class ResponseCreate(_Strict):
    model: str = Field(min_length=1)
    input: str | list[InputItem] = Field(description="a text, or the conversation's items: "
                                         "messages, function calls and their outputs")
    instructions: str | None = Field(None, description="a system message before the input")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(None, description="accepted; prompts are cached "
                                         "by their prefix anyway")
    # accepted so they can be refused by name instead of as "extra fields"
    store: Any = None
    previous_response_id: Any = None
    conversation: Any = None
    background: Any = None
    reasoning: Any = None
    include: Any = None
    top_logprobs: Any = None
    prompt: Any = None
    max_tool_calls: Any = None
    context_management: Any = None
    truncation: Any = None

    def unsupported(self) -> str | None:
        for name, neutral in UNSUPPORTED.items():
            allowed = neutral if isinstance(neutral, tuple) else (neutral,)
            if getattr(self, name) not in allowed:
                return name
        return None
