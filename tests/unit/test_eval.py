"""`chatqna eval`'s pure parts: the question set, configurations, scoring, the summary, the table and the chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comps.runtime import eval as ev

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).parents[2] / "benchmarks" / "eval" / "handbook.jsonl"


def test_the_shipped_question_set_loads_and_names_shipped_documents() -> None:
    qs = ev.load_questions(SHIPPED)
    assert len(qs) >= 10 and all(q.sources and q.facts for q in qs)
    for q in qs:
        assert (SHIPPED.parent / q.sources[0]).is_file()


def test_bad_lines_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok?"}\n{"source": "x"}\n')
    with pytest.raises(ev.EvalError, match=r"q.jsonl:2: not a question"):
        ev.load_questions(bad)


def test_configurations_take_request_fields_and_a_url() -> None:
    base = ev.parse_config("top_n=2,rerank=false", base=ev.Config("base", "http://127.0.0.1:8888", {}))
    assert base.fields == {"top_n": 2, "rerank": False}
    other = ev.parse_config("gemma:url=http://127.0.0.1:8889/,collection=docs-256", base=base)
    assert (other.name, other.url) == ("gemma", "http://127.0.0.1:8889")
    assert other.fields == {"top_n": 2, "rerank": False, "collection": "docs-256"}
    with pytest.raises(ev.EvalError, match="is not key=value"):
        ev.parse_config("x:oops", base=base)


def test_scoring_sources_and_facts() -> None:
    q = ev.Question("q", ("handbook/leave.md",), (("27",), ("five", "5")))
    a = ev.Answer("q", text="You have 27 days;  FIVE carry over.", sources=["x/other.md", "/srv/handbook/leave.md"])
    ev.score(q, a)
    assert (a.rank, a.fact) == (2, True)
    b = ev.Answer("q", text="27 days.", sources=["leave.md"])  # not the same path ending
    ev.score(q, b)
    assert (b.rank, b.fact) == (None, False)


def test_configurations_take_turns_to_go_first() -> None:
    a, b, c = (ev.Config(name, "http://127.0.0.1:8888", {}) for name in "abc")
    assert [[x.name for x in ev.in_turn([a, b, c], n)] for n in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]
    ]  # fmt: skip


def test_summary_table_and_chart() -> None:
    qs = [ev.Question(f"q{i}", ("a.md",), (("x",),)) for i in range(4)]
    answers = [
        ev.Answer("q0", text="x", sources=["a.md"], ttft_s=0.5, total_s=1.0, prompt_tokens=100, completion_tokens=10,
                  finish_reason="stop"),
        ev.Answer("q1", text="y", sources=["b.md", "a.md"], ttft_s=1.5, total_s=2.0, finish_reason="repetition"),
        ev.Answer("q2", text="x", sources=["b.md"], ttft_s=1.0, total_s=3.0, finish_reason="length"),
        ev.Answer("q3", error="HTTP 502: down"),
    ]  # fmt: skip
    for q, a in zip(qs, answers, strict=True):
        ev.score(q, a)
    s = ev.summary(qs, answers)
    assert (s["source_at_1"], s["source_at_k"], s["mrr"], s["fact"]) == (0.25, 0.5, 0.375, 0.5)
    assert (s["ttft_p50_s"], s["total_p95_s"], s["errors"]) == (1.0, 3.0, 1)
    assert s["finish_reasons"] == {"stop": 1, "repetition": 1, "length": 1, "error": 1}
    report = {"summary": {"base": s, "other": s}}
    table = ev.table(report)
    assert "| source@1 | 25% | 25% |" in table and "| TTFT p50 | 1.00 s | 1.00 s |" in table
    svg = ev.chart_svg(report)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<rect") >= 12
    json.dumps(report)


def test_percentiles_are_nearest_rank() -> None:
    assert ev.percentile([], 50) is None
    assert ev.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert ev.percentile([float(i) for i in range(1, 21)], 95) == 19.0


def test_short_facts_must_be_whole_words() -> None:
    assert ev.contains("The default is 8 spaces.", "8") and not ev.contains("Node uses V8 and port 80.", "8")
    assert ev.contains("Use --inspect-brk here", "--inspect-brk") and ev.contains("It returns '.md'.", ".md")
    assert ev.contains("Set to 1.", "set to 1") and not ev.contains("set to 10", "set to 1")
    assert ev.contains("It reads $HOME.", "HOME") and not ev.contains("the user's home directory", "HOME")


def test_markdown_marks_are_ignored_and_a_name_may_follow_a_dot() -> None:
    assert ev.contains("the delay will be set to `1`.", "set to 1") and ev.contains("It is **1000**.", "1000")
    assert ev.contains("Use `socket.setTTL(ttl)`.", "setTTL") and not ev.contains("Use socket.setTTLs().", "setTTL")
    assert not ev.contains("Version 0.8 is old.", "8") and not ev.contains("set to `10`", "set to 1")
