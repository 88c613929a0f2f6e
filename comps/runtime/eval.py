"""`chatqna eval`: run a question set against a running gateway and measure retrieval, answers and speed.

The question set is JSONL, one question a line::

    {"question": "What is the default maxsize of lru_cache?", "source": "functools.html", "facts": ["128"],
     "collection": "docs"}

``source`` is the document that holds the answer (a file name, a path or URL ending, or a list of
acceptable ones); ``facts`` are strings the answer must contain (case and spacing ignored; an entry that
is a list is a set of alternatives, any one of which counts); ``collection`` is optional.

Each question is sent as a streamed ``POST /v1/chatqna``, one at a time, with the configuration's extra
request fields. Measured per configuration:

- source@1: the first source of the answer is the expected document; source@k: it is among the sources;
  MRR: mean of 1 / rank of the first expected source (0 when absent);
- fact: the answer contains every expected fact;
- TTFT (first content chunk) and total time, p50 and p95; prompt and completion tokens (means), and how
  the answers ended (finish_reason).

``--compare NAME:key=value,...`` adds a configuration: request fields (``top_n=2``, ``rerank=false``,
``collection=docs-256``, ``max_tokens=64``) and ``url=...`` to point at another gateway (another model).
The report (JSON) keeps every answer; the chart (SVG) shows the rates and p50 times side by side.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from comps.core.http import bearer, sse_data

_SPACES = re.compile(r"\s+")
_MARKS = re.compile(r"[`*]")  # Markdown code and emphasis: "set to `1`" is "set to 1"
DEFAULT_URL = "http://127.0.0.1:8888"


class EvalError(Exception):
    """A bad question set or configuration, or a gateway that cannot be used."""


@dataclass(frozen=True)
class Question:
    question: str
    sources: tuple[str, ...]
    facts: tuple[tuple[str, ...], ...]  # every fact, each a set of alternatives
    collection: str | None = None


@dataclass(frozen=True)
class Config:
    name: str
    url: str
    fields: dict[str, Any]


@dataclass
class Answer:
    question: str
    text: str = ""
    sources: list[str] = field(default_factory=list)
    rank: int | None = None  # 1-based rank of the first expected source among the answer's sources
    fact: bool = False
    ttft_s: float | None = None
    total_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


# ------------------------------------------------------------------------------------------------- inputs


def load_questions(path: Path) -> list[Question]:
    questions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            raw = json.loads(line)
            text = raw["question"]
            sources = raw.get("source") or []
            sources = (sources,) if isinstance(sources, str) else tuple(sources)
            facts = tuple((f,) if isinstance(f, str) else tuple(f) for f in raw.get("facts") or ())
            if not isinstance(text, str) or not text.strip():
                raise ValueError("question must be a non-empty string")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EvalError(f"{path}:{n}: not a question ({exc})") from None
        questions.append(Question(text, sources, facts, raw.get("collection")))
    if not questions:
        raise EvalError(f"{path} has no questions")
    return questions


def parse_config(spec: str, *, base: Config) -> Config:
    """``name:key=value,key=value`` (values read as JSON when they are, else as strings) on top of ``base``."""
    name, _, rest = spec.partition(":") if ":" in spec.split("=", 1)[0] else ("", "", spec)
    fields = dict(base.fields)
    url = base.url
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EvalError(f"{item!r} is not key=value")
        parsed = _value(value.strip())
        if key.strip() == "url":
            url = str(parsed)
        else:
            fields[key.strip()] = parsed
    return Config(name or rest or "compare", url.rstrip("/"), fields)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ----------------------------------------------------------------------------------------------- scoring


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def matches(source: str | None, expected: str) -> bool:
    """``source`` (as stored: a path or URL) is the ``expected`` document: equal, or ending with it at a ``/``."""
    if not source:
        return False
    s, e = source.rstrip("/"), expected.rstrip("/")
    return s == e or s.endswith("/" + e.lstrip("/"))


def contains(text: str, fact: str) -> bool:
    """``fact`` is in ``text``, spacing and Markdown's code and emphasis marks (`` ` ``, ``*``) ignored, and case
    too unless the fact is in capitals (``HOME`` is not "home"); a fact that starts or ends with a letter or
    digit must start or end a word there ("8" is not found in "v8", "80" or "0.8"; "setTTL" is found in
    "socket.setTTL()")."""
    capitals = fact.isupper()
    text = _MARKS.sub("", text)
    fact, text = (" ".join(fact.split()), " ".join(text.split())) if capitals else (_norm(fact), _norm(text))
    if not fact:
        return False
    left = (r"(?<![\w.])" if fact[0].isdigit() else r"(?<!\w)") if fact[0].isalnum() else ""
    right = r"(?!\w)" if fact[-1].isalnum() else ""
    return re.search(left + re.escape(fact) + right, text) is not None


def score(q: Question, answer: Answer) -> None:
    answer.rank = next(
        (i for i, s in enumerate(answer.sources, start=1) if any(matches(s, e) for e in q.sources)), None
    )
    answer.fact = bool(q.facts) and all(any(contains(answer.text, alt) for alt in fact) for fact in q.facts)


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank, 0 < p <= 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary(questions: list[Question], answers: list[Answer]) -> dict[str, Any]:
    n = len(answers)
    ok = [a for a in answers if a.error is None]
    with_source = [a for q, a in zip(questions, answers, strict=True) if q.sources]
    with_facts = [a for q, a in zip(questions, answers, strict=True) if q.facts]
    ttft = [a.ttft_s for a in ok if a.ttft_s is not None]
    total = [a.total_s for a in ok]

    def rate(items: list[Answer], ok_: Any) -> float | None:
        return sum(1 for a in items if ok_(a)) / len(items) if items else None

    return {
        "questions": n,
        "errors": n - len(ok),
        "source_at_1": rate(with_source, lambda a: a.rank == 1),
        "source_at_k": rate(with_source, lambda a: a.rank is not None),
        "mrr": sum(1 / a.rank for a in with_source if a.rank) / len(with_source) if with_source else None,
        "fact": rate(with_facts, lambda a: a.fact),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "total_p50_s": percentile(total, 50),
        "total_p95_s": percentile(total, 95),
        "prompt_tokens_mean": statistics.fmean(a.prompt_tokens for a in ok) if ok else None,
        "completion_tokens_mean": statistics.fmean(a.completion_tokens for a in ok) if ok else None,
        "finish_reasons": dict(Counter(a.finish_reason or "error" for a in answers)),
    }


# ------------------------------------------------------------------------------------------------ asking


async def ask(session: aiohttp.ClientSession, config: Config, q: Question, timeout_s: float) -> Answer:
    # Never from the answer cache: the run measures the pipeline (``--set cache=true`` measures the cache).
    body: dict[str, Any] = {
        "messages": q.question,
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache": False,
    }
    if q.collection:
        body["collection"] = q.collection
    body.update(config.fields)
    answer = Answer(q.question)
    parts: list[str] = []
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(f"{config.url}/v1/chatqna", json=body) as resp:
                if resp.status >= 400:
                    raise EvalError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
                async for data in sse_data(resp):
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if isinstance(chunk.get("error"), dict):
                        raise EvalError(str(chunk["error"].get("message")))
                    if "sources" in chunk:
                        answer.sources = [s.get("source") or "" for s in chunk["sources"]]
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if answer.ttft_s is None:
                                answer.ttft_s = time.perf_counter() - started
                            parts.append(text)
                        answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
                    if usage := chunk.get("usage"):
                        answer.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        answer.completion_tokens = int(usage.get("completion_tokens") or 0)
    except (EvalError, aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    answer.total_s = time.perf_counter() - started
    answer.text = "".join(parts)
    score(q, answer)
    return answer


def in_turn(configs: list[Config], n: int) -> list[Config]:
    """The configurations in the order question ``n`` asks them: each goes first in turn."""
    first = n % len(configs)
    return configs[first:] + configs[:first]


async def run(
    questions: list[Question],
    configs: list[Config],
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    warmup: int = 1,
    on_answer: Any = None,
) -> dict[str, Any]:
    """Every question under every configuration (one at a time, configurations interleaved per question so
    that a machine's varying load falls on all of them alike, and taking turns to go first: a configuration
    asked right after another with the same first passage reuses the LLM's cached prompt prefix and would
    otherwise always show the shorter time to first token); returns the report."""
    answers: dict[str, list[Answer]] = {c.name: [] for c in configs}
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=timeout_s)
    async with aiohttp.ClientSession(headers=bearer(api_key), timeout=timeout) as session:
        for c in configs:
            for q in questions[:warmup]:  # first requests pay for cold caches: not counted
                await ask(session, c, q, timeout_s)
        for n, q in enumerate(questions):
            for c in in_turn(configs, n):
                a = await ask(session, c, q, timeout_s)
                answers[c.name].append(a)
                if on_answer is not None:
                    on_answer(c, a)
    return {
        "configs": [{"name": c.name, "url": c.url, "fields": c.fields} for c in configs],
        "summary": {c.name: summary(questions, answers[c.name]) for c in configs},
        "answers": {name: [asdict(a) for a in items] for name, items in answers.items()},
    }


# ------------------------------------------------------------------------------------------------ output

ROWS = (
    ("source@1", "source_at_1", "pct"),
    ("source@k", "source_at_k", "pct"),
    ("MRR", "mrr", "f2"),
    ("fact", "fact", "pct"),
    ("TTFT p50", "ttft_p50_s", "s"),
    ("TTFT p95", "ttft_p95_s", "s"),
    ("total p50", "total_p50_s", "s"),
    ("total p95", "total_p95_s", "s"),
    ("prompt tokens", "prompt_tokens_mean", "f0"),
    ("answer tokens", "completion_tokens_mean", "f0"),
    ("errors", "errors", "int"),
)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    return {
        "pct": f"{value:.0%}",
        "f2": f"{value:.2f}",
        "s": f"{value:.2f} s",
        "f0": f"{value:.0f}",
        "int": str(value),
    }[kind]


def table(report: dict[str, Any]) -> str:
    """The summary as a Markdown table: one column per configuration."""
    names = list(report["summary"])
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, kind in ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(report["summary"][n][key], kind) for n in names) + " |")
    ends = " | ".join(
        ", ".join(f"{k} {v}" for k, v in sorted(report["summary"][n]["finish_reasons"].items())) for n in names
    )
    lines.append(f"| finish | {ends} |")
    return "\n".join(lines)


def chart_svg(report: dict[str, Any]) -> str:
    """Grouped bars: the rates (0-100 %) and the p50 times (seconds, on their own scale), one colour each config."""
    names = list(report["summary"])
    colours = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")
    rates = [("source@1", "source_at_1"), ("source@k", "source_at_k"), ("MRR", "mrr"), ("fact", "fact")]
    times = [("TTFT p50", "ttft_p50_s"), ("total p50", "total_p50_s")]
    top = max([report["summary"][n][k] or 0 for n in names for _, k in times] + [0.001])
    bar, gap, height, base = 18, 26, 180, 220
    width = 60 + (len(rates) + len(times)) * (len(names) * bar + gap) + 160
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{base + 60}" font-size="11" '
        + 'font-family="sans-serif">',
        f'<line x1="40" y1="{base}" x2="{width - 150}" y2="{base}" stroke="#333"/>',
    ]
    x = 50
    for group, (label, key) in enumerate([*rates, *times]):
        scale = 1.0 if group < len(rates) else top
        for i, n in enumerate(names):
            value = report["summary"][n][key] or 0
            h = height * value / scale
            out.append(
                f'<rect x="{x + i * bar}" y="{base - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                f'fill="{colours[i % len(colours)]}"><title>{n} {label}: {value:.3g}</title></rect>'
            )
            text = f"{value:.0%}" if group < len(rates) and key != "mrr" else f"{value:.2f}"
            out.append(
                f'<text x="{x + i * bar + bar / 2 - 1}" y="{base - h - 3:.1f}" text-anchor="middle" '
                f'font-size="8">{text}</text>'
            )
        out.append(f'<text x="{x + len(names) * bar / 2}" y="{base + 16}" text-anchor="middle">{label}</text>')
        x += len(names) * bar + gap
    out.append(
        f'<text x="{50 + len(rates) * (len(names) * bar + gap)}" y="{base + 34}">times in s (max {top:.2f} s)</text>'
    )
    for i, n in enumerate(names):
        out.append(
            f'<rect x="{width - 140}" y="{20 + i * 16}" width="10" height="10" fill="{colours[i % len(colours)]}"/>'
        )
        out.append(f'<text x="{width - 125}" y="{29 + i * 16}">{_escape(n)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
