"""The batched engine against a plain run, on the real GGUF: with greedy decoding an answer is the same text,
finish reason and usage whether it runs alone, beside 3 other sequences in the same batch, after a prompt-cache
hit, or after another sequence was cancelled in the middle of its prompt.

The plain run is llama.cpp's simplest loop, written here: one sequence in a context of its own, the whole prompt
in one ``llama_decode``, then one token per call, each the argmax of the logits."""

from __future__ import annotations

import ctypes
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from comps.llm.backends import Delta, Event, Finished
from comps.llm.engine import Engine, SamplingParams, Sequence
from comps.llm.settings import DEFAULT_MODEL

pytestmark = pytest.mark.integration

N_CTX = 512  # each sequence's window (the cancelled long prompt gets LONG_N_CTX)
LONG_N_CTX = 2048
MAX_TOKENS = 12  # short answers keep the tests quick; long enough to tell two answers apart
EVENT_WAIT_S = 120.0  # how long a test waits for the engine's next event before it calls the engine stuck
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)


def chat(question: str) -> str:
    """SmolLM2's ChatML prompt for one user turn."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


QUESTION = chat("What is the capital of France?")
OTHERS = [
    chat("Name three colours of the rainbow."),
    chat("Write one sentence about the sea."),
    chat("Why do cats purr? Answer briefly, then explain the science behind it in detail."),
]


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class PlainRun:
    """Greedy decoding of one sequence with llama.cpp's bare API (a reference that shares no engine code)."""

    def __init__(self, model: Path, n_ctx: int) -> None:
        import llama_cpp as L

        self.L = L
        mparams = L.llama_model_default_params()
        mparams.use_extra_bufts = False  # as the engine (LLM_USE_EXTRA_BUFTS defaults to off)
        self.model = L.llama_model_load_from_file(str(model).encode(), mparams)
        assert self.model, f"llama.cpp could not load {model}"
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cparams = L.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = 2
        self.ctx = L.llama_init_from_model(self.model, cparams)
        assert self.ctx, "llama.cpp could not create a context"

    def close(self) -> None:
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)

    def answer(self, prompt: list[int], max_tokens: int = MAX_TOKENS) -> Answer:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        pieces: list[bytes] = []
        reason = "length"
        tokens = prompt
        while True:
            array = (L.llama_token * len(tokens))(*tokens)
            assert L.llama_decode(self.ctx, L.llama_batch_get_one(array, len(tokens))) == 0
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            token = int(np.argmax(logits))
            if L.llama_vocab_is_eog(self.vocab, token):
                reason = "stop"
                break
            pieces.append(self._piece(token))
            if len(pieces) == max_tokens:
                break
            tokens = [token]
        return Answer(b"".join(pieces).decode("utf-8", "replace"), reason, len(prompt), len(pieces))

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        assert n >= 0
        return buf.raw[:n]


class Run:
    """One sequence in the engine and the events it emitted; ``timeline`` (shared by runs) orders them all."""

    def __init__(self, name: str, seq_args: tuple[list[int], SamplingParams], timeline: list[tuple[str, str]]) -> None:
        self.name = name
        self.events: queue.Queue[Event | Exception] = queue.Queue()
        self.text = ""

        def emit(event: Event | Exception) -> None:  # engine thread
            timeline.append((name, type(event).__name__))
            self.events.put(event)

        self.seq = Sequence(*seq_args, emit)

    def next_event(self) -> Event | Exception:
        try:
            event = self.events.get(timeout=EVENT_WAIT_S)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no event from the engine within {EVENT_WAIT_S:g}s") from None
        if isinstance(event, Delta):
            self.text += event.text
        return event

    def answer(self) -> Answer:
        """The events up to the end: all the text, and the finish reason and usage of `Finished`."""
        while True:
            event = self.next_event()
            if isinstance(event, Exception):
                raise event
            if isinstance(event, Finished):
                return Answer(
                    self.text, event.reason, event.prompt_tokens, event.completion_tokens, event.cached_tokens
                )


class Runner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.timeline: list[tuple[str, str]] = []

    def submit(self, name: str, prompt: list[int], params: SamplingParams = GREEDY) -> Run:
        run = Run(name, (prompt, params), self.timeline)
        self.engine.submit(run.seq)
        return run

    def index(self, name: str, kind: str) -> int:
        """Where the first event of ``kind`` from ``name`` stands in the timeline."""
        return self.timeline.index((name, kind))


@contextmanager
def engine(model: Path, *, parallel: int, n_batch: int = 512, n_ctx: int = N_CTX) -> Iterator[Runner]:
    e = Engine(model, n_ctx=n_ctx, n_batch=n_batch, parallel=parallel, n_threads=2)
    e.start()
    try:
        yield Runner(e)
    finally:
        e.close()


@pytest.fixture(scope="module")
def model(models_dir: Path) -> Path:
    return models_dir / DEFAULT_MODEL


@pytest.fixture(scope="module")
def plain(model: Path) -> Iterator[PlainRun]:
    run = PlainRun(model, N_CTX)
    yield run
    run.close()


def uncached(answer: Answer) -> Answer:
    """The answer as a plain run reports it (no prompt cache)."""
    return Answer(answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)


@pytest.mark.parametrize(("question", "reason"), [(QUESTION, "stop"), (OTHERS[2], "length")], ids=["stop", "length"])
def test_alone(model: Path, plain: PlainRun, question: str, reason: str) -> None:
    with engine(model, parallel=4) as r:
        prompt = r.engine.tokenize(question)
        got = r.submit("target", prompt).answer()
    want = plain.answer(prompt)
    assert want.text.strip() and want.finish_reason == reason  # an answer that ends, and one cut at max_tokens
    assert got == want  # text, finish reason, usage; nothing cached in a fresh engine


def test_beside_three_other_sequences_in_the_batch(model: Path, plain: PlainRun) -> None:
    longer = SamplingParams(max_tokens=2 * MAX_TOKENS, temperature=0.0)
    with engine(model, parallel=4) as r:
        others = [r.submit(f"other{i}", r.engine.tokenize(p), longer) for i, p in enumerate(OTHERS)]
        for other in others:  # each one is generating before the target comes
            assert isinstance(other.next_event(), Delta)
        prompt = r.engine.tokenize(QUESTION)
        got = r.submit("target", prompt).answer()
        rest = [other.answer() for other in others]
        # the others were still decoding, in the same steps, while the target read its prompt and answered
        first_token = r.index("target", "Delta")
        assert all(r.index(o.name, "Delta") < first_token < r.index(o.name, "Finished") for o in others), r.timeline
    assert uncached(got) == plain.answer(prompt)
    for other, answer in zip(others, rest, strict=True):
        assert uncached(answer) == plain.answer(other.seq.prompt, longer.max_tokens)


def test_after_a_prompt_cache_hit(model: Path, plain: PlainRun) -> None:
    with engine(model, parallel=4) as r:
        prompt = r.engine.tokenize(QUESTION)
        first = r.submit("first", prompt).answer()
        again = r.submit("again", prompt).answer()
        follow_up = r.engine.tokenize(QUESTION + first.text + "<|im_end|>\n" + chat("And of Italy?"))
        turn2 = r.submit("turn2", follow_up).answer()
    assert first.cached_tokens == 0 and first == plain.answer(prompt)
    assert again.cached_tokens == len(prompt) - 1  # all but the last token, decoded again for its logits
    assert uncached(again) == first
    assert turn2.cached_tokens >= len(prompt)  # the first turn's prompt at least came from the cache
    assert uncached(turn2) == plain.answer(follow_up)


def test_after_another_sequence_was_cancelled_mid_prompt(model: Path, plain: PlainRun) -> None:
    # Small steps (n_batch 32), so that a long prompt takes dozens of them; two slots, so that the target takes
    # the slot the cancelled sequence held; the cancelled prompt starts like the target's (a stale cache matches).
    with engine(model, parallel=2, n_batch=32, n_ctx=LONG_N_CTX) as r:
        prompt = r.engine.tokenize(QUESTION)
        facts = " ".join(f"Fact {i}: {i} comes after {i - 1}." for i in range(1, 100))
        long_prompt = r.engine.tokenize(chat("What is the capital of France? " + facts))
        assert 40 * 32 < len(long_prompt) < LONG_N_CTX - MAX_TOKENS
        other = r.submit("other", r.engine.tokenize(OTHERS[0]), SamplingParams(max_tokens=8, temperature=0.0))
        victim = r.submit("victim", long_prompt)
        for _ in range(3):  # a token of the other sequence per step, and 31 tokens of the victim's prompt
            assert isinstance(other.next_event(), Delta)
        r.engine.cancel(victim.seq)
        got = r.submit("target", prompt).answer()
        other.answer()
    assert victim.events.empty(), "the cancelled sequence emitted events"  # it never reached its first token
    assert 0 < victim.seq.pos < len(long_prompt), victim.seq.pos  # cancelled in the middle of its prompt
    assert uncached(got) == plain.answer(prompt)
