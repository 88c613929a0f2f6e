"""No model: BM25 over the candidate texts, fused with their retrieval rank by reciprocal rank fusion.

Two rankings of the candidates are fused:
- the retrieval rank: the order of ``texts`` in the request (the retriever's, best first);
- the BM25 rank: Okapi BM25 (k1=1.5, b=0.75, IDF ``log(1 + (N - df + 0.5) / (df + 0.5))``) of the
  query against the candidates themselves (N = number of candidates). Only candidates sharing at
  least one term with the query are in this ranking; equal BM25 scores keep the retrieval order.

Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): ``score = sum over rankings of
1 / (k + rank)``, rank from 1, with ``k = RERANKER_RRF_K`` (60, the paper's value). A larger k flattens
the difference between ranks. The score is that sum: at most ``2 / (k + 1)``.

Terms: NFKC-normalized, case-folded ``\\w+`` words, a short English stop-word list removed, and a
trailing plural ``s`` folded (``lighthouses`` -> ``lighthouse``).
"""

from __future__ import annotations

import asyncio
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from comps.core.http import HttpClient
from comps.reranker.settings import RerankerSettings

K1 = 1.5
B = 0.75
STOP_WORDS = frozenset(
    "a s t an and are as at be been by can could did do does for from had has have how i if in into is it its "
    "me my no not of on or our so than that the their them then there these they this those to was we were "
    "what when where which who whom why will with would you your".split()
)
_WORD = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    """The text's search terms (see the module docstring)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    return [_fold(w) for w in words if w not in STOP_WORDS]


def _fold(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def bm25(query: Sequence[str], docs: Sequence[Sequence[str]], *, k1: float = K1, b: float = B) -> list[float]:
    """Okapi BM25 of ``query`` (terms) against each of ``docs`` (terms), IDF taken over ``docs``."""
    n = len(docs)
    if n == 0:
        return []
    avg_len = sum(len(d) for d in docs) / n or 1.0
    df = Counter(t for d in docs for t in set(d))
    counts = [Counter(d) for d in docs]
    scores = []
    for doc, tf in zip(docs, counts, strict=True):
        norm = k1 * (1 - b + b * len(doc) / avg_len)
        score = 0.0
        for t in set(query):
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf[t] * (k1 + 1) / (tf[t] + norm)
        scores.append(score)
    return scores


def rrf(rankings: Sequence[Sequence[int]], n: int, k: int) -> list[float]:
    """Reciprocal rank fusion of ``rankings`` (each a list of item ids, best first) over items ``0..n-1``."""
    fused = [0.0] * n
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] += 1.0 / (k + rank)
    return fused


def fuse(query: str, texts: Sequence[str], k: int) -> list[float]:
    """The fused score of each text: BM25 rank (matching texts only) and retrieval rank (the given order)."""
    lexical = bm25(terms(query), [terms(t) for t in texts])
    by_bm25 = sorted((i for i, s in enumerate(lexical) if s > 0), key=lambda i: (-lexical[i], i))
    return rrf([range(len(texts)), by_bm25], len(texts), k)


class LexicalFusionReranker:
    name = model_name = "lexical-fusion"

    def __init__(self, settings: RerankerSettings) -> None:
        self.k = settings.rrf_k

    async def warm_up(self, http: HttpClient) -> None:
        return None

    async def check_ready(self) -> dict[str, Any]:
        method = "BM25 over the candidates + retrieval rank, reciprocal rank fusion"
        return {"model": None, "method": method, "rrf_k": self.k}

    async def score(self, query: str, texts: list[str], *, truncate: bool, raw: bool) -> list[float]:
        # Pure Python and quick (a few ms for 256 texts), but still kept off the event loop.
        return await asyncio.to_thread(fuse, query, texts, self.k)

    async def close(self) -> None:
        return None
