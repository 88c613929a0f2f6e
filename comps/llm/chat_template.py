"""Chat formatting with the model's own Jinja template, rendered the way llama-cpp-python and
Transformers do (sandboxed, trim_blocks/lstrip_blocks, ``raise_exception``, ``strftime_now``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from comps.core.errors import BadRequest
from comps.llm.protocol import ChatMessage


class _IgnoreGeneration(jinja2.ext.Extension):
    """Pass-through for HuggingFace's ``{% generation %}`` tag."""

    tags = {"generation"}  # noqa: RUF012 - jinja2.ext.Extension declares it an instance attribute

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TemplateError(Exception):
    pass


def _raise(message: str) -> None:
    raise _TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """Transformers' ``tojson``: non-ASCII kept as is."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def load_template_source(setting: str | None, from_model: str | None) -> str:
    """The template to use: ``setting`` (a file path or inline Jinja) wins over the model's own."""
    if setting:
        path = Path(setting).expanduser()
        if "{" not in setting and path.is_file():
            return path.read_text(encoding="utf-8")
        return setting
    if not from_model:
        raise ValueError("the model has no tokenizer.chat_template; set LLM_CHAT_TEMPLATE")
    return from_model


TEMPLATES = Path(__file__).parent / "templates"  # for GGUFs that carry none (named by `chatqna models fetch`)


def sidecar_template(model: Path) -> str | None:
    """``<model>.jinja`` next to a GGUF, when there is one: the template of a GGUF that carries none."""
    path = model.with_name(model.name + ".jinja")
    return str(path) if path.is_file() else None


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGeneration, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        self._template = env.from_string(source)  # a syntax error fails start-up, with its line
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages``, ending with the assistant's generation prompt."""
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.text()} for m in messages],
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=_raise,
                strftime_now=lambda fmt: datetime.now().astimezone().strftime(fmt),
                tools=None,
            )
        except (_TemplateError, jinja2.TemplateError) as exc:
            raise BadRequest(f"the chat template refused these messages: {exc}", param="messages") from None

    def turn_stops(self) -> list[str]:
        """The template's markers that end an assistant turn or start the next turn (``<|im_end|>``,
        ``<end_of_turn>``, ``<|im_start|>user``): generated as plain text, they end the answer."""
        mark = "\x00answer\x00"
        try:
            turns = [ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content=mark)]
            answered = self.render(turns, add_generation_prompt=False)
            followed = self.render([*turns, ChatMessage(role="user", content="\x00next\x00")])
        except BadRequest:
            return []
        after = answered.partition(mark)[2]
        opener = followed.partition(mark)[2][len(after) :].partition("\x00next\x00")[0]
        stops = [after.strip(), opener.strip()]
        return [s for i, s in enumerate(stops) if s and s not in stops[:i]]
