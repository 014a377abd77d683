"""A GGUF whose embedded chat template tries to escape Jinja's sandbox (the attacks of
CVE-2024-34359 and its kin) has no effect on the host.

LLMOS renders no template in Python: the worker hands the template to llama.cpp, whose
Jinja engine (C++) has no Python objects to climb. Built here as real GGUF files (the
default model with ``tokenizer.chat_template`` replaced), loaded by the engine and
sent a chat: each is refused when the model loads (what llama.cpp does today: its
template check fails on them), or fails to render, or renders inert; no file appears,
and an engine that loaded goes on answering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.engines import load_engine
from llmos.engines.base import EngineConfig, EngineEvent
from llmos.errors import LLMOSError
from llmos.registry.gguf import read_gguf
from tests.gguf_edit import with_string
from tests.model import gemma_path

ATTACKS = [
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch {marker}') }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c(['touch', '{marker}']) }}{% endif %}{% endfor %}",
    "{{ namespace.__init__.__globals__.os.system('touch {marker}') }}",
]
RENDER = ("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
          "{% endfor %}<start_of_turn>model\n")


@pytest.mark.parametrize("attack", range(len(ATTACKS)))
def test_a_template_escape_is_inert(attack: int, tmp_path: Path,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    marker = tmp_path / "escaped"
    template = ATTACKS[attack].replace("{marker}", str(marker)) + RENDER
    hostile = tmp_path / "hostile.gguf"
    with_string(gemma_path(tmp_path_factory), hostile, "tokenizer.chat_template", template)
    assert read_gguf(hostile).get("tokenizer.chat_template") == template  # (a real GGUF)
    try:
        engine = load_engine("llama.cpp", EngineConfig(model_path=hostile, slots=1, ctx_size=512,
                                                       threads=2))
    except LLMOSError:
        assert not marker.exists()  # refused at load: fine, and inert
        return
    try:
        events: list[EngineEvent] = []
        body = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4,
                "temperature": 0}
        try:
            engine.generate("chat", body, lambda e: events.append(e) or False)
        except LLMOSError:
            pass  # the template failed to render: this request is refused
        assert not marker.exists(), "the template reached the host"
        answer = engine.generate("completion", {"prompt": "1, 2, 3,", "max_tokens": 2,
                                                "temperature": 0}, lambda e: False)
        assert answer.completion_tokens == 2  # the engine still serves
    finally:
        engine.close()
    assert not marker.exists()


def test_the_rewritten_file_itself_loads_and_renders(tmp_path: Path,
                                                     tmp_path_factory: pytest.TempPathFactory
                                                     ) -> None:
    """The control: the same rewrite with a harmless template loads, and the template
    is the one rendered (so a refusal above is the attack's doing, not the file's)."""
    benign = tmp_path / "benign.gguf"
    with_string(gemma_path(tmp_path_factory), benign, "tokenizer.chat_template", RENDER)
    engine = load_engine("llama.cpp", EngineConfig(model_path=benign, slots=1, ctx_size=512,
                                                   threads=2))
    try:
        answer = engine.generate("chat", {"messages": [{"role": "user", "content": "Say hi"}],
                                          "max_tokens": 2, "temperature": 0}, lambda e: False)
        assert answer.prompt_tokens > 3 and answer.completion_tokens == 2
    finally:
        engine.close()
