"""The LLM service as a real process on the real GGUF, driven by the official openai client and raw
HTTP; its remote backend pointed at a second instance of itself."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from comps.runtime.models import DEFAULT_LLM
from comps.runtime.process import free_port
from tests.support.procs import start_service
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

MODULE = "comps.llm"
N_CTX = 2048
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
FRENCH = [{"role": "user", "content": "Écris une phrase en français sur le café."}]
LONG_TASK = [{"role": "user", "content": "Write a very long story about a cat who becomes a sailor."}]
# ChatML without the default system prompt that the GGUF's own template adds.
CUSTOM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{{ '<|im_start|>assistant\\n' }}"  # a trailing newline outside an expression would be dropped by Jinja
)


@pytest.fixture(scope="module")
def llm(models_dir, tmp_path_factory):
    svc = start_service(
        MODULE, "LLM_", {"LLM_N_CTX": str(N_CTX), "LLM_PARALLEL": "2"}, log_dir=tmp_path_factory.mktemp("llm")
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def single(models_dir, tmp_path_factory):
    """One slot, one queue place, and a chat template given inline."""
    env = {"LLM_N_CTX": str(N_CTX), "LLM_PARALLEL": "1", "LLM_MAX_QUEUE": "1", "LLM_CHAT_TEMPLATE": CUSTOM_TEMPLATE}
    svc = start_service(MODULE, "LLM_", env, name="llm-single", log_dir=tmp_path_factory.mktemp("llm-single"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def remote(llm, tmp_path_factory):
    env = {"LLM_BACKEND": "remote", "LLM_REMOTE_URL": llm.url + "/v1", "LLM_REMOTE_TIMEOUT_S": "30"}
    svc = start_service(MODULE, "LLM_", env, name="llm-remote", log_dir=tmp_path_factory.mktemp("llm-remote"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def vocab(models_dir):
    """The GGUF's tokenizer and chat template in this process, as llama-cpp-python reads them."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tok = Llama(str(models_dir / DEFAULT_LLM), vocab_only=True, verbose=False)

    def special(token: int) -> str:
        return str(tok.detokenize([token], special=True).decode())

    fmt = Jinja2ChatFormatter(
        tok.metadata["tokenizer.chat_template"], eos_token=special(tok.token_eos()), bos_token=special(tok.token_bos())
    )

    class Vocab:
        def prompt_tokens(self, messages: list[dict]) -> int:
            return len(tok.tokenize(fmt(messages=messages).prompt.encode(), add_bos=True, special=True))

        def tokens(self, text: str, special: bool = False) -> int:
            return len(tok.tokenize(text.encode(), add_bos=False, special=special))

    return Vocab()


def client(svc) -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="x", max_retries=0, timeout=60)


def complete(svc, messages: list[dict], **kw):
    return client(svc).chat.completions.create(model="anything", messages=messages, **kw)


def sse_lines(svc, body: dict) -> list[str]:
    with httpx.stream("POST", svc.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def metric(svc, name: str) -> float:
    text = httpx.get(svc.url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# ---- the llama-cpp backend ----


def test_readiness_and_models_name_the_loaded_gguf(llm) -> None:
    ready = httpx.get(llm.url + "/v1/ready").json()
    assert {k: ready[k] for k in ("status", "backend", "model", "n_ctx", "parallel")} == {
        "status": "ready",
        "backend": "llama-cpp",
        "model": DEFAULT_LLM,
        "n_ctx": N_CTX,
        "parallel": 2,
    }
    assert [m.id for m in client(llm).models.list().data] == [DEFAULT_LLM]


def test_non_streaming_answer_has_true_usage_and_real_model(llm, vocab) -> None:
    resp = complete(llm, QUESTION, max_tokens=16, temperature=0)
    assert resp.model == DEFAULT_LLM
    assert resp.object == "chat.completion"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == vocab.prompt_tokens(QUESTION)
    assert resp.usage.completion_tokens == 16 == vocab.tokens(resp.choices[0].message.content)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 16


def test_stream_grammar_is_exact(llm) -> None:
    usage = {"stream_options": {"include_usage": True}}
    lines = sse_lines(llm, {"messages": QUESTION, "max_tokens": 8, "temperature": 0, **usage})
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {DEFAULT_LLM}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert all("usage" not in c for c in chunks[:-1])


def test_stream_without_usage_ends_with_finish_then_done(llm) -> None:
    lines = sse_lines(llm, {"messages": QUESTION, "max_tokens": 4, "temperature": 0})
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_openai_stream_matches_the_non_streaming_answer(llm) -> None:
    whole = complete(llm, QUESTION, max_tokens=24, temperature=0)
    stream = complete(llm, QUESTION, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_temperature_zero_is_deterministic(llm) -> None:
    a = complete(llm, LONG_TASK, max_tokens=24, temperature=0).choices[0].message.content
    b = complete(llm, LONG_TASK, max_tokens=24, temperature=0).choices[0].message.content
    assert a == b and len(a) > 20


def test_same_seed_same_text_other_seed_other_text(llm) -> None:
    def sample(seed: int) -> str:
        return complete(llm, LONG_TASK, max_tokens=24, temperature=1.5, seed=seed).choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2))


def test_top_k_one_and_tiny_top_p_are_greedy(llm) -> None:
    def text(**kw) -> str:
        return complete(llm, LONG_TASK, max_tokens=16, **kw).choices[0].message.content

    greedy = text(temperature=0)
    assert text(temperature=1.0, extra_body={"top_k": 1}, seed=5) == greedy  # top_k is not in the openai client
    assert text(temperature=1.0, top_p=1e-6, seed=5) == greedy


def test_frequency_penalty_changes_a_repetitive_answer(llm) -> None:
    plain = complete(llm, QUESTION, max_tokens=30, temperature=0).choices[0].message.content
    penalised = complete(llm, QUESTION, max_tokens=30, temperature=0, frequency_penalty=2.0).choices[0].message.content
    assert penalised != plain


def test_stop_string_cuts_the_answer_before_it(llm) -> None:
    full = complete(llm, LONG_TASK, max_tokens=40, temperature=0).choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]  # a word from the middle: usually split over tokens with its space
    expected = full[: full.index(stop)]
    cut = complete(llm, LONG_TASK, max_tokens=40, temperature=0, stop=[stop, "never-there"])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    streamed = complete(llm, LONG_TASK, max_tokens=40, temperature=0, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


LOOP = [
    {"role": "user", "content": "Repeat after me: The blue kettle sings every morning."},
    {"role": "assistant", "content": "The blue kettle sings every morning. The blue kettle sings every morning."},
    {"role": "user", "content": "Keep repeating it, many times."},
]


def sentences(text: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n", text) if len(s.strip()) >= 20]


def test_a_repeated_sentence_ends_the_answer_before_it_is_sent_again(llm) -> None:
    # Greedy decoding can take another path once part of the prompt is cached, so the test does not compare two
    # runs: with the service's default no sentence is ever sent twice, whatever path the model takes.
    for stream in (False, True):
        if stream:
            chunks = list(complete(llm, LOOP, max_tokens=120, temperature=0, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            ended = complete(llm, LOOP, max_tokens=120, temperature=0)
            text, reason = ended.choices[0].message.content, ended.choices[0].finish_reason
        said = sentences(text)
        assert said and len(said) == len(set(said)), text
        assert reason in ("repetition", "stop"), (reason, text)
    let = complete(llm, LOOP, max_tokens=120, temperature=0, extra_body={"stop_on_repetition": False})
    assert let.choices[0].finish_reason in ("length", "stop")  # never "repetition" when switched off


def test_non_ascii_round_trips_in_both_modes(llm, vocab) -> None:
    whole = complete(llm, FRENCH, max_tokens=20, temperature=0)
    text = whole.choices[0].message.content
    assert whole.usage.prompt_tokens == vocab.prompt_tokens(FRENCH)
    assert re.search(r"[éçèà]", text) and "\ufffd" not in text
    lines = sse_lines(llm, {"messages": FRENCH, "max_tokens": 20, "temperature": 0})
    assert "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1]) == text
    cut = complete(llm, FRENCH, max_tokens=20, temperature=0, stop="é").choices[0].message.content
    assert cut == text[: text.index("é")]


def test_prompt_over_the_context_window_is_a_clear_400(llm, vocab) -> None:
    n = vocab.prompt_tokens(QUESTION)
    with pytest.raises(openai.BadRequestError) as info:
        complete(llm, QUESTION, max_tokens=3000)
    body = info.value.body
    assert info.value.status_code == 400 and body["code"] == "context_length_exceeded"
    assert f"maximum context length is {N_CTX} tokens" in body["message"]
    assert f"you requested {n + 3000} tokens ({n} in the messages, 3000 in the completion)" in body["message"]

    huge = [{"role": "user", "content": "lorem ipsum " * 1500}]
    resp = httpx.post(llm.url + "/v1/chat/completions", json={"messages": huge}, timeout=60)
    assert resp.status_code == 400
    sent = vocab.prompt_tokens(huge)
    assert f"({sent} in the messages, 1 in the completion)" in resp.json()["error"]["message"]
    assert httpx.get(llm.url + "/v1/ready").status_code == 200  # and nothing crashed


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"n": 2}, "only n=1 is supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools are not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format: Extra inputs are not permitted"),
        ({"temperature": -1}, "temperature"),
    ],
)
def test_invalid_requests_get_400_in_the_envelope(llm, extra: dict, needle: str) -> None:
    resp = httpx.post(llm.url + "/v1/chat/completions", json={"messages": QUESTION, **extra}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert needle in resp.json()["error"]["message"]


def test_metrics_count_tokens_and_time_each_generation(llm) -> None:
    names = (
        "generated_tokens_total",
        "prompt_tokens_total",
        "time_to_first_token_seconds_count",
        "time_per_output_token_seconds_count",
    )
    before = {m: metric(llm, f"chatqna_llm_{m}") for m in names}
    resp = complete(llm, QUESTION, max_tokens=6, temperature=0)
    grown = {m: metric(llm, f"chatqna_llm_{m}") - before[m] for m in names}
    assert grown == {
        "generated_tokens_total": 6,
        "prompt_tokens_total": resp.usage.prompt_tokens,
        "time_to_first_token_seconds_count": 1,
        "time_per_output_token_seconds_count": 1,
    }
    assert metric(llm, "chatqna_llm_active_sequences") == 0


# ---- one slot: disconnects and the bounded queue ----


def first_content(lines: Iterator[str]) -> str:
    """Read up to the first content chunk; pass the same iterator on (a dropped httpx line iterator
    closes its response)."""
    for line in lines:
        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
            return line
    raise AssertionError("the stream ended without content")


def test_inline_chat_template_is_used(single, vocab) -> None:
    resp = complete(single, [{"role": "user", "content": "Hello there, friend."}], max_tokens=2, temperature=0)
    rendered = "<|im_start|>user\nHello there, friend.<|im_end|>\n<|im_start|>assistant\n"
    assert resp.usage.prompt_tokens == vocab.tokens(rendered, special=True)


def test_a_disconnecting_client_frees_its_slot_at_once(single) -> None:
    body = {"messages": LONG_TASK, "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", single.url + "/v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            first_content(lines)
            assert metric(single, "chatqna_llm_active_sequences") == 1
            assert next(lines) is not None  # still streaming
        wait_for(lambda: metric(single, "chatqna_llm_active_sequences") == 0, "the abandoned sequence to end", 30)
        generated = metric(single, "chatqna_llm_generated_tokens_total")
        waits = metric(single, "chatqna_llm_queue_wait_seconds_count")
        waited = metric(single, "chatqna_llm_queue_wait_seconds_sum")
        short = complete(single, LONG_TASK, max_tokens=4, temperature=0)
        assert short.usage.completion_tokens == 4
        # nothing generated meanwhile but these 4 tokens: the abandoned generation is over
        assert metric(single, "chatqna_llm_generated_tokens_total") == generated + 4
        # It got the only slot at once (the 1500-token stream would have held it for ~20 s).
        assert metric(single, "chatqna_llm_queue_wait_seconds_count") == waits + 1
        assert metric(single, "chatqna_llm_queue_wait_seconds_sum") == waited


def test_a_non_streaming_client_that_gives_up_stops_its_generation(single) -> None:
    body = {"messages": LONG_TASK, "max_tokens": 1500, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client hangs up after a second
        httpx.post(single.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    wait_for(lambda: metric(single, "chatqna_llm_active_sequences") == 0, "the abandoned sequence to end", 30)
    generated = metric(single, "chatqna_llm_generated_tokens_total")
    assert complete(single, LONG_TASK, max_tokens=2, temperature=0).usage.completion_tokens == 2
    assert metric(single, "chatqna_llm_generated_tokens_total") == generated + 2  # nothing else generates


def test_a_full_queue_answers_429_with_retry_after(single) -> None:
    body = {"messages": LONG_TASK, "max_tokens": 1500, "temperature": 0, "stream": True}
    queued: dict[str, httpx.Response] = {}

    def wait_in_queue() -> None:
        queued["resp"] = httpx.post(
            single.url + "/v1/chat/completions",
            timeout=60,
            json={"messages": LONG_TASK, "max_tokens": 4, "temperature": 0},
        )

    with httpx.Client(timeout=30) as http, http.stream("POST", single.url + "/v1/chat/completions", json=body) as hold:
        lines = hold.iter_lines()
        first_content(lines)
        waiter = threading.Thread(target=wait_in_queue)
        waiter.start()
        wait_for(lambda: metric(single, "chatqna_llm_queue_depth") == 1, "the second request to queue", 30)
        third = httpx.post(single.url + "/v1/chat/completions", json={"messages": QUESTION}, timeout=10)
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["type"] == "rate_limit_error" and third.json()["error"]["code"] == "queue_full"
    waiter.join(30)
    assert queued["resp"].status_code == 200
    assert queued["resp"].json()["usage"]["completion_tokens"] == 4


# ---- the remote backend, in front of the llama-cpp instance ----


def test_remote_passes_answers_through(remote, llm) -> None:
    direct = complete(llm, QUESTION, max_tokens=12, temperature=0)
    via = complete(remote, QUESTION, max_tokens=12, temperature=0)
    assert via.model == DEFAULT_LLM
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert (via.usage.prompt_tokens, via.usage.completion_tokens) == (direct.usage.prompt_tokens, 12)
    assert [m.id for m in client(remote).models.list().data] == [DEFAULT_LLM]
    assert httpx.get(remote.url + "/v1/ready").json()["backend"] == "remote"


def test_remote_stream_keeps_the_grammar(remote) -> None:
    usage = {"stream_options": {"include_usage": True}}
    lines = sse_lines(remote, {"messages": QUESTION, "max_tokens": 6, "temperature": 0, **usage})
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_remote_keeps_the_upstream_400(remote) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(remote, QUESTION, max_tokens=3000)
    assert info.value.status_code == 400
    assert f"maximum context length is {N_CTX} tokens" in info.value.body["message"]
    assert "3000 in the completion" in info.value.body["message"]


def test_remote_without_upstream_is_not_ready_and_answers_503(service_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    svc = service_factory(MODULE, "LLM_", {"LLM_BACKEND": "remote", "LLM_REMOTE_URL": dead}, wait="health")
    assert httpx.get(svc.url + "/v1/ready").status_code == 503
    resp = httpx.post(svc.url + "/v1/chat/completions", json={"messages": QUESTION}, timeout=30)
    assert resp.status_code == 503
    assert "unreachable" in resp.json()["error"]["message"]


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(service_factory) -> None:
    upstream = service_factory(MODULE, "LLM_", {"LLM_N_CTX": str(N_CTX), "LLM_PARALLEL": "1"}, name="llm-doomed")
    svc = service_factory(MODULE, "LLM_", {"LLM_BACKEND": "remote", "LLM_REMOTE_URL": upstream.url}, name="llm-front")
    body = {"messages": LONG_TASK, "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", svc.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        lines = resp.iter_lines()
        first_content(lines)
        os.killpg(upstream.process.pid, signal.SIGKILL)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][6:])["error"]
    assert error["type"] == "upstream_error" and "llm-remote" in error["message"]
