"""Request validation and chat templating of the LLM service."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comps.core.errors import BadRequest
from comps.llm.chat_template import ChatTemplate, load_template_source
from comps.llm.protocol import ChatCompletionRequest, ChatMessage

pytestmark = pytest.mark.unit

USER = [{"role": "user", "content": "hi"}]


def test_defaults_follow_openai() -> None:
    req = ChatCompletionRequest(messages=USER)
    assert (req.temperature, req.top_p, req.stream, req.token_limit(), req.stop_list()) == (1.0, 1.0, False, None, [])


def test_temperature_zero_stays_zero() -> None:
    assert ChatCompletionRequest(messages=USER, temperature=0).temperature == 0.0


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert ChatCompletionRequest(messages=USER, max_tokens=5, max_completion_tokens=9).token_limit() == 9


def test_stop_as_string_or_list() -> None:
    assert ChatCompletionRequest(messages=USER, stop="\n").stop_list() == ["\n"]
    assert ChatCompletionRequest(messages=USER, stop=["a", "", "b"]).stop_list() == ["a", "b"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"n": 2}, "only n=1 is supported"),
        ({"tools": [{"type": "function"}]}, "tools are not supported"),
        ({"tool_choice": "auto"}, "tools are not supported"),
        ({"logit_bias": {"1": 2}}, "Extra inputs are not permitted"),
        ({"temperature": 2.5}, "less than or equal to 2"),
        ({"top_p": 0}, "greater than 0"),
        ({"max_tokens": 0}, "greater than or equal to 1"),
        ({"stop": [str(i) for i in range(17)]}, "at most 16 stop strings"),
        ({"messages": []}, "at least 1 item"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "'system', 'user' or 'assistant'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "text"),
    ],
)
def test_invalid_requests_are_refused(extra: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest(**{"messages": USER, **extra})
    assert needle in str(info.value)


def test_content_parts_are_joined() -> None:
    msg = ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert msg.text() == "a\nb"
    assert ChatMessage(role="assistant").text() == ""


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_template_renders_messages_and_generation_prompt() -> None:
    tpl = ChatTemplate(CHATML, bos_token="<s>", eos_token="</s>")
    prompt = tpl.render([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Grüße")])
    assert (
        prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nGrüße<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_raise_exception_is_a_bad_request() -> None:
    tpl = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('must start with user') }}{% endif %}ok",
        bos_token="",
        eos_token="",
    )
    assert tpl.render([ChatMessage(role="user", content="x")]) == "ok"
    with pytest.raises(BadRequest, match="must start with user"):
        tpl.render([ChatMessage(role="assistant", content="x")])


def test_template_uses_bos_token_and_tojson() -> None:
    tpl = ChatTemplate("{{ bos_token }}{{ messages[0]['content'] | tojson }}", bos_token="<s>", eos_token="")
    assert tpl.render([ChatMessage(role="user", content="é")]) == '<s>"é"'


def test_template_source_setting_wins_as_file_or_inline(tmp_path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text("FROM FILE", encoding="utf-8")
    assert load_template_source(str(path), "MODEL") == "FROM FILE"
    assert load_template_source("{{ messages }}", "MODEL") == "{{ messages }}"
    assert load_template_source(None, "MODEL") == "MODEL"
    with pytest.raises(ValueError, match="LLM_CHAT_TEMPLATE"):
        load_template_source(None, None)


GEMMA = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def test_the_templates_turn_markers_are_stop_strings() -> None:
    assert ChatTemplate(CHATML, bos_token="", eos_token="").turn_stops() == ["<|im_end|>", "<|im_start|>user"]
    assert ChatTemplate(GEMMA, bos_token="<bos>", eos_token="<eos>").turn_stops() == [
        "<end_of_turn>", "<start_of_turn>user",
    ]  # fmt: skip
    refuses = "{% if messages|length > 1 %}{{ raise_exception('one turn only') }}{% endif %}x"
    assert ChatTemplate(refuses, bos_token="", eos_token="").turn_stops() == []


def test_repetition_fields_are_optional_and_bounded() -> None:
    req = ChatCompletionRequest(messages=USER)
    assert (req.repetition_penalty, req.stop_on_repetition) == (None, None)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=USER, repetition_penalty=0)
    assert (
        ChatCompletionRequest(messages=USER, repetition_penalty=1.2, stop_on_repetition=False).repetition_penalty == 1.2
    )
