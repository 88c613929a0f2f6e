"""Semantic matching of the answer cache: how often a paraphrase hits, and how often a different question does.

    .venv/bin/python benchmarks/eval_cache_semantic.py [--model models/all-MiniLM-L6-v2]

40 topics, each with a question, a paraphrase of it (same answer: should hit) and a near miss (same topic and
words, another answer: must not hit; a hit there is a wrong answer). Questions are embedded with the embedding
service's model, in-process (the gateway compares normalised embeddings by cosine similarity,
`GATEWAY_CACHE_SEMANTIC_THRESHOLD`). For each threshold: precision = paraphrase hits / all hits, recall =
paraphrase hits / 40 paraphrases, and the near misses that would have been served a wrong answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# (question, paraphrase: same answer, near miss: another answer)
TOPICS: list[tuple[str, str, str]] = [
    ("How many vacation days do new employees get?", "How much paid leave does a new hire receive?",
     "How many sick days do new employees get?"),
    ("Who approves travel expenses?", "Which person signs off on travel costs?",
     "Who approves hardware purchases?"),
    ("What is the deadline for submitting expense reports?", "By when must expense reports be handed in?",
     "What is the limit for a single expense report?"),
    ("How do I reset my VPN password?", "What are the steps to change my VPN password?",
     "How do I reset my email password?"),
    ("When is the office closed for the holidays?", "On which dates does the office shut for the holidays?",
     "When is the office open on weekends?"),
    ("What is the maximum hotel rate per night?", "How much can I spend on a hotel room per night?",
     "What is the maximum meal allowance per day?"),
    ("Who is the keeper of the Velloran lighthouse?", "Who keeps the Velloran lighthouse?",
     "Who built the Velloran lighthouse?"),
    ("How long is parental leave?", "For how many weeks can a parent take leave?",
     "How is parental leave paid?"),
    ("What is the capital of Pelmora?", "Which town is Pelmora's capital?",
     "What is the population of Pelmora?"),
    ("How much coolant does the Zorblax-7 reactor use?", "What quantity of coolant does the Zorblax-7 reactor need?",
     "What kind of coolant does the Zorblax-7 reactor use?"),
    ("How do I request remote work?", "What is the process to ask for working from home?",
     "How many days of remote work are allowed?"),
    ("What time does the cafeteria open?", "When does the canteen open in the morning?",
     "What time does the cafeteria close?"),
    ("Which laptop models can employees order?", "What laptops are employees allowed to choose?",
     "Which phone models can employees order?"),
    ("How often are performance reviews held?", "How frequently do performance reviews happen?",
     "Who conducts performance reviews?"),
    ("What is the notice period for resignation?", "How much notice must I give when I resign?",
     "What is the notice period for dismissal by the company?"),
    ("Where do I report a security incident?", "To whom should a security incident be reported?",
     "How do I report a lost badge?"),
    ("Is overtime paid?", "Do employees get paid for overtime?",
     "Is overtime allowed on Sundays?"),
    ("How much does the Brindle kettle hold?", "What is the capacity of the Brindle kettle?",
     "How long does the Brindle kettle take to boil?"),
    ("What is the retention period for customer data?", "How long is customer data kept?",
     "Where is customer data stored?"),
    ("Who can access the server room?", "Which people are allowed into the server room?",
     "When is the server room cleaned?"),
    ("How do I book a meeting room?", "What is the way to reserve a meeting room?",
     "How do I cancel a meeting room booking?"),
    ("What is the company's pension contribution?", "How much does the company pay into my pension?",
     "When can I withdraw my pension?"),
    ("How many monitors can I get at my desk?", "What is the number of screens allowed per desk?",
     "How many chairs can I get at my desk?"),
    ("What is the dress code on Fridays?", "What should I wear on Fridays?",
     "What is the dress code for client meetings?"),
    ("When are salaries paid?", "On what day is the salary paid out?",
     "How are salaries reviewed?"),
    ("How do I enroll in the health insurance plan?", "How can I sign up for health insurance?",
     "What does the health insurance plan cover?"),
    ("What is the minimum password length?", "How long must a password be at least?",
     "How often must passwords be changed?"),
    ("Who commissioned the Zorblax-7 reactor?", "By whom was the Zorblax-7 reactor commissioned?",
     "When was the Zorblax-7 reactor commissioned?"),
    ("Can I bring my dog to the office?", "Are dogs allowed in the office?",
     "Can I bring my children to the office?"),
    ("How much is the training budget per employee?", "What amount can each employee spend on training?",
     "How do I apply for a training course?"),
    ("Where is the first aid kit?", "Where can I find the first aid kit?",
     "Who is the first aid officer?"),
    ("What is the official fruit of Pelmora?", "Which fruit is Pelmora's official fruit?",
     "What is the official flower of Pelmora?"),
    ("How do I get a parking permit?", "What is the procedure for obtaining a parking permit?",
     "How much does a parking permit cost?"),
    ("How many people live in Tarvenholt?", "What is the population of Tarvenholt?",
     "How many people work in Tarvenholt?"),
    ("What happens if I lose my laptop?", "What should I do when my laptop is lost?",
     "What happens if my laptop breaks?"),
    ("Are contractors allowed to use the gym?", "Can contractors use the company gym?",
     "Are employees' partners allowed to use the gym?"),
    ("How do I change my bank details for payroll?", "How can I update the bank account my salary goes to?",
     "How do I change my tax code for payroll?"),
    ("What is the probation period?", "How long does the probationary period last?",
     "What happens at the end of the probation period?"),
    ("What is the budget for team lunches?", "How much may a team spend on a team lunch?",
     "How often are team lunches allowed?"),
    ("Which browser is supported for the intranet?", "What web browser should I use for the intranet?",
     "Which language is the intranet available in?"),
]  # fmt: skip

THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "all-MiniLM-L6-v2"))
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    texts = [t for topic in TOPICS for t in topic]
    vectors = np.asarray(model.encode(texts, normalize_embeddings=True, batch_size=64))
    q, para, near = vectors[0::3], vectors[1::3], vectors[2::3]
    same = np.sum(q * para, axis=1)
    other = np.sum(q * near, axis=1)
    n = len(TOPICS)
    print(f"{n} paraphrase pairs: cosine min {same.min():.3f} median {np.median(same):.3f} max {same.max():.3f}")
    print(f"{n} near misses:      cosine min {other.min():.3f} median {np.median(other):.3f} max {other.max():.3f}")
    print(f"\n{'threshold':>9} {'precision':>9} {'recall':>7} {'paraphrase hits':>15} {'wrong hits':>10}")
    for t in THRESHOLDS:
        tp, fp = int(np.sum(same >= t)), int(np.sum(other >= t))
        precision = tp / (tp + fp) if tp + fp else 1.0
        print(f"{t:>9.2f} {precision:>9.3f} {tp / n:>7.3f} {tp:>15} {fp:>10}")
    worst = int(np.argmax(other))
    print(f"\nclosest near miss ({other[worst]:.3f}): {TOPICS[worst][0]!r} vs {TOPICS[worst][2]!r}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
