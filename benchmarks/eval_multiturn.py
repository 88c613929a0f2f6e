"""Multi-turn retrieval: does the condense-question step find the right passage more often than the heuristic?

    .venv/bin/python benchmarks/eval_multiturn.py

A made-up corpus (so the models know nothing of it): 8 facilities, each with an overview passage and a staffing
passage, 16 passages in all. 24 two-turn dialogs: a first question naming the facility, its answer, then a
follow-up that does not name it (pronouns, "there", ellipsis, long follow-ups without a pointing word). For each
follow-up, the search query is made three ways and the passages are ranked by the default embedding model
(cosine, as the retriever's FLAT index):

- latest: the follow-up alone;
- heuristic: `megaservice.prompt.retrieval_query` (the gateway's default);
- condense: `megaservice.condense` (its prompt, parsing and fallback) run by the default LLM in-process
  (llama-cpp-python, greedy), as the gateway runs it through the LLM service.

Prints hit@1 and hit@3 of the gold passage for each, and the rewrite's time (median). CPU only, about a minute.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megaservice.condense import clean, condense_messages  # noqa: E402
from megaservice.prompt import retrieval_query  # noqa: E402
from megaservice.protocol import Message  # noqa: E402

FACILITIES = {
    "Quellmoor": ("a tidal power station on the northern coast", "Ilse Varga", 42, "kelp turbines"),
    "Brantwick": ("a seed vault dug into a granite hill", "Tomas Ekholm", 9, "cold storage"),
    "Ostravel": ("a glassworks that makes telescope mirrors", "Mira Holt", 130, "annealing ovens"),
    "Dunmere": ("a weather observatory on a sea stack", "Peder Lunn", 6, "radar masts"),
    "Calloway Reach": ("a salt evaporation works in the delta", "Ana Ruiz", 75, "brine pans"),
    "Fennick": ("a railway workshop that restores steam engines", "Odo Graves", 58, "boiler shop"),
    "Marrowgate": ("a paper mill powered by a river wheel", "Lise Brun", 88, "pulp vats"),
    "Tessaly": ("a bee research farm in the hills", "Rune Dahl", 14, "hive sheds"),
}


def corpus() -> list[tuple[str, str]]:
    docs = []
    for name, (what, head, staff, part) in FACILITIES.items():
        docs.append(
            (
                f"{name}:overview",
                f"{name} is {what}. It opened decades ago and its best-known part is the "
                f"{part}, which visitors can see on guided tours in summer.",
            )
        )
        docs.append(
            (
                f"{name}:staff",
                f"At {name}, {staff} people work in three shifts. The site is led by {head}, "
                f"who also runs the night shift and the safety training.",
            )
        )
    return docs


FOLLOW_UPS = [
    "Who leads it?",
    "How many people work there in total across all the shifts?",
    "And who runs the night shift?",
    "Who is in charge of the safety training for the staff working on that site",
]


def dialogs() -> list[tuple[list[Message], str]]:
    out = []
    for n, (name, (what, _, _, _)) in enumerate(FACILITIES.items()):
        for k in (n % 4, (n + 1) % 4, (n + 2) % 4):
            chat = [
                Message(role="user", content=f"What is {name}?"),
                Message(role="assistant", content=f"{name} is {what}."),
                Message(role="user", content=FOLLOW_UPS[k]),
            ]
            out.append((chat, f"{name}:staff"))
    return out


def main() -> None:
    import numpy as np
    from llama_cpp import Llama
    from sentence_transformers import SentenceTransformer

    from comps.runtime.models import DEFAULT_LLM

    models = REPO / "models"
    encoder = SentenceTransformer(str(models / "all-MiniLM-L6-v2"), device="cpu")
    llm = Llama(str(models / DEFAULT_LLM), n_ctx=2048, n_threads=2, verbose=False)
    docs = corpus()
    doc_vecs = encoder.encode([t for _, t in docs], normalize_embeddings=True)
    ids = [i for i, _ in docs]
    cases = dialogs()
    queries: dict[str, list[str]] = {"latest": [], "heuristic": [], "condense": []}
    rewrite_s = []
    for chat, _ in cases:
        queries["latest"].append(chat[-1].text())
        heuristic = retrieval_query(chat)
        queries["heuristic"].append(heuristic)
        messages = condense_messages(chat)
        assert messages is not None
        started = time.perf_counter()
        out = llm.create_chat_completion(messages=[m.model_dump() for m in messages], max_tokens=48, temperature=0.0)
        rewrite_s.append(time.perf_counter() - started)
        queries["condense"].append(clean(out["choices"][0]["message"]["content"] or "") or heuristic)
    print(f"{len(cases)} follow-ups, {len(docs)} passages; rewrite median {statistics.median(rewrite_s) * 1000:.0f} ms")
    for way, texts in queries.items():
        vecs = encoder.encode(texts, normalize_embeddings=True)
        ranks = np.argsort(-(vecs @ doc_vecs.T), axis=1)
        golds = [gold for _, gold in cases]
        hit1 = sum(ids[r[0]] == g for r, g in zip(ranks, golds, strict=True)) / len(cases)
        hit3 = sum(g in {ids[i] for i in r[:3]} for r, g in zip(ranks, golds, strict=True)) / len(cases)
        print(f"  {way:<10} hit@1 {hit1:.2f}  hit@3 {hit3:.2f}")
    print("\nexamples of condense:")
    for (chat, _), text in list(zip(cases, queries["condense"], strict=True))[:6]:
        print(f"  {chat[-1].text()!r} -> {text!r}")


if __name__ == "__main__":
    main()
