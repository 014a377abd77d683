"""Prompt prefixes as hashes: a chat's next turn extends its previous turn's."""

from __future__ import annotations

from llmos.gateway.prefixes import BLOCK_CHARS, MAX_PREFIXES, prefixes

SYSTEM = {"role": "system", "content": "You are terse."}


def chat(*messages: dict[str, str], tools: list[dict[str, object]] | None = None
         ) -> dict[str, object]:
    body: dict[str, object] = {"messages": list(messages), "temperature": 0.3}
    if tools:
        body["tools"] = tools
    return body


def test_a_next_turn_holds_the_previous_turns_prefixes() -> None:
    first = [SYSTEM, {"role": "user", "content": "Hi"}]
    second = [*first, {"role": "assistant", "content": "Hello."},
              {"role": "user", "content": "Bye"}]
    one, two = prefixes("chat", chat(*first)), prefixes("chat", chat(*second))
    assert len(one.hashes) == 2 and len(two.hashes) == 4
    assert two.hashes[:2] == one.hashes
    assert two.chars[:2] == one.chars and two.chars == sorted(two.chars)


def test_sampling_parameters_do_not_change_a_prefix_but_tools_and_content_do() -> None:
    base = prefixes("chat", chat(SYSTEM))
    assert prefixes("chat", {**chat(SYSTEM), "temperature": 1.5, "seed": 3}) == base
    assert prefixes("chat", chat({"role": "system", "content": "You are kind."})) != base
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert prefixes("chat", chat(SYSTEM, tools=[tool])).hashes != base.hashes


def test_a_completion_prompt_is_cut_in_blocks() -> None:
    prompt = "x" * (3 * BLOCK_CHARS + 10)
    found = prefixes("completion", {"prompt": prompt})
    assert found.chars == [BLOCK_CHARS, 2 * BLOCK_CHARS, 3 * BLOCK_CHARS]
    longer = prefixes("completion", {"prompt": prompt + "y" * BLOCK_CHARS})
    assert longer.hashes[:3] == found.hashes
    assert prefixes("completion", {"prompt": "short"}).hashes == []
    assert prefixes("completion", {"prompt": ["a", "b"]}).hashes == []
    assert prefixes("embedding", {"input": "x" * 1000}).hashes == []


def test_only_the_longest_prefixes_are_kept() -> None:
    many = [{"role": "user", "content": str(i)} for i in range(MAX_PREFIXES + 10)]
    found = prefixes("chat", chat(*many))
    assert len(found.hashes) == MAX_PREFIXES
    assert found.hashes[-1] == prefixes("chat", chat(*many)).hashes[-1]
    assert found.hashes[0] == prefixes("chat", chat(*many[:11])).hashes[-1]
