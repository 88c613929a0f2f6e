"""The LLM engine survives a failure of one sequence and reports its own death (issue 12, defect 2).

A real llama.cpp engine on the default GGUF, driven directly: an exception while admitting, sampling or
detokenising one sequence fails that sequence only (its slot comes back, the others finish, later requests
are served); a failure of the engine itself marks it dead and calls ``on_death`` (the backend then makes
the process exit so that its supervisor restarts it)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comps.runtime.models import DEFAULT_LLM

pytestmark = pytest.mark.integration

L = pytest.importorskip("llama_cpp")

from comps.llm.backends import Finished  # noqa: E402
from comps.llm.engine import Engine, EngineError, SamplingParams, Sequence  # noqa: E402

BROKEN_SEED = 13


@pytest.fixture
def engine(models_dir: Path) -> Iterator[Engine]:
    eng = Engine(models_dir / DEFAULT_LLM, n_ctx=256, n_batch=64, parallel=2, n_threads=2)
    eng.start()
    yield eng
    eng.close()


def submit(engine: Engine, text: str, seed: int = 1, max_tokens: int = 8) -> queue.Queue:
    events: queue.Queue = queue.Queue()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=seed)
    engine.submit(Sequence(engine.tokenize(text), params, events.put))
    return events


def all_slots_free(engine: Engine) -> None:
    """A sequence's last event comes just before its slot is handed back: wait for the hand-back."""
    deadline = time.monotonic() + 30
    while len(engine._free_slots) != engine.parallel:
        assert time.monotonic() < deadline, "a slot was never freed"
        time.sleep(0.01)


def outcome(events: queue.Queue) -> object:
    """The sequence's last event: `Finished` or the exception it got."""
    while True:
        event = events.get(timeout=120)
        if isinstance(event, (Finished, Exception)):
            return event


def test_a_sampling_failure_fails_one_sequence_and_the_engine_goes_on(engine: Engine, monkeypatch) -> None:
    real = engine._on_token

    def on_token(seq: Sequence, token: int) -> None:
        if seq.params.seed == BROKEN_SEED and seq.generated == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a detokenising bug")
        real(seq, token)

    monkeypatch.setattr(engine, "_on_token", on_token)
    broken, fine = submit(engine, "Tell me a story", seed=BROKEN_SEED), submit(engine, "Tell me a story", seed=2)
    failed = outcome(broken)
    assert isinstance(failed, EngineError) and "a detokenising bug" in failed.message
    assert isinstance(outcome(fine), Finished)
    assert engine.alive()
    assert isinstance(outcome(submit(engine, "Another question")), Finished)
    all_slots_free(engine)


def test_an_admission_failure_fails_one_sequence_and_frees_its_slot(engine: Engine, monkeypatch) -> None:
    real = engine._make_sampler

    def make_sampler(p: SamplingParams):
        if p.seed == BROKEN_SEED:
            raise RuntimeError("sampler chain refused")
        return real(p)

    monkeypatch.setattr(engine, "_make_sampler", make_sampler)
    failed = outcome(submit(engine, "Hello", seed=BROKEN_SEED))
    assert isinstance(failed, EngineError) and "sampler chain refused" in failed.message
    assert engine.alive()
    results = [submit(engine, f"Question {i}", seed=i + 1) for i in range(3)]  # more than `parallel`
    assert all(isinstance(outcome(q), Finished) for q in results)
    all_slots_free(engine)


def test_a_dead_engine_says_so_and_calls_on_death(engine: Engine, monkeypatch) -> None:
    died = threading.Event()
    reasons: list[BaseException] = []

    def on_death(exc: BaseException) -> None:
        reasons.append(exc)
        died.set()

    def broken_bookkeeping() -> None:
        raise RuntimeError("engine bookkeeping broke")

    engine.on_death = on_death
    monkeypatch.setattr(engine, "_drop_cancelled", broken_bookkeeping)
    failed = outcome(submit(engine, "Hello"))
    assert isinstance(failed, EngineError) and "the generation engine stopped" in failed.message
    assert died.wait(30) and str(reasons[0]) == "engine bookkeeping broke"
    assert not engine.alive()
    with pytest.raises(EngineError, match="not running"):
        submit(engine, "anyone there?")
