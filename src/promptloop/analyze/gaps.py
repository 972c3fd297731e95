"""Knowledge-base gaps: what users asked that the app's documents do not answer.

A prompt rewrite cannot fix a missing document. A logged interaction points to one when the app
abstained ("I'm not sure"), refused a question that was no injection attempt, got a 👎 or a low
online-judge score, *and*
retrieval was weak for its question: the best document scored below `min_score`, or the retrieved
documents hold under `min_coverage` of the question's key terms. An abstention on a question whose
document was found is the prompt's failure, not the knowledge base's, and is left to the optimizer.

Retrieval is what the app logged with the row when it logged it (`metadata.retrieved`: document ids,
or objects with `id` and `score`; the apps of `python:`/`http:` targets), else it is re-run on the
app's knowledge base (BM25, as the template target does). The gap rows are grouped by question
(TF-IDF cosine, average linkage), and each group is reported with its topic, its most asked
questions, how many users hit it and the existing document nearest to it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from promptloop.analyze.topics import topic_words
from promptloop.core.config import KbGapSettings
from promptloop.domain.kb import Document, Retriever
from promptloop.domain.results import KbGapResult

MAX_ASKED = 50  # distinct questions kept per gap (improve matches golden cases and drafts from them)
EXAMPLES = 3


@dataclass(frozen=True)
class Retrieval:
    """What retrieval found for one question: the documents' ids, the best score, the key-term coverage."""

    documents: tuple[str, ...]
    best_score: float | None
    coverage: float | None
    source: str  # kb | logged


def key_terms(question: str) -> list[str]:
    """The words of a question that say what it is about (stopwords and PII placeholders dropped; Korean stems)."""
    return list(dict.fromkeys(topic_words(question)))


def coverage(question: str, texts: list[str]) -> float | None:
    """Share of the question's key terms found in the documents' text (None: no key terms or no documents).
    A substring match: a Korean stem matches its inflected forms, an English word its plural."""
    words = key_terms(question)
    if not words or not texts:
        return None
    haystack = " ".join(texts).lower()
    return sum(w in haystack for w in words) / len(words)


def logged_retrieval(metadata: object) -> tuple[list[str], list[float], list[str]] | None:
    """(ids, scores, texts) of the documents the app logged with a row, or None when it logged none.

    `metadata` is the stored JSON text; `retrieved` holds ids, or objects with `id`/`doc_id` and optional
    `score` and `text`/`content`.
    """
    try:
        data = json.loads(metadata) if isinstance(metadata, str) and metadata else None
    except ValueError:
        return None
    items = data.get("retrieved") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    ids: list[str] = []
    scores: list[float] = []
    texts: list[str] = []
    for item in items:
        if isinstance(item, str):
            ids.append(item)
        elif isinstance(item, dict):
            doc = item.get("id") or item.get("doc_id")
            if doc is not None:
                ids.append(str(doc))
            if isinstance(item.get("score"), (int, float)):
                scores.append(float(item["score"]))
            text = item.get("text") or item.get("content")
            if isinstance(text, str):
                texts.append(text)
    return ids, scores, texts


def retrieval_of(question: str, metadata: object, retriever: Retriever | None, docs: dict[str, Document],
                 top_k: int) -> Retrieval | None:
    """The row's retrieval: the logged one when present (scores and texts as logged, a known id's text from the
    knowledge base), else the knowledge base's BM25 search; None when neither exists."""
    logged = logged_retrieval(metadata)
    if logged is not None:
        ids, scores, texts = logged
        if not ids and not texts:  # the app logged that retrieval found nothing: the weakest retrieval of all
            return Retrieval((), None, 0.0, "logged")
        texts = texts or [f"{docs[i].title} {docs[i].body}" for i in ids if i in docs]
        # BM25 on the KB is the score of record when there is one; a logged score is on the app's own scale
        best = max(scores) if scores else None
        if not scores and retriever is not None:
            hits = retriever.search(question, 1)
            best = hits[0].score if hits else 0.0
        return Retrieval(tuple(ids), best, coverage(question, texts), "logged" if scores or not docs else "kb")
    if retriever is None:
        return None
    hits = retriever.search(question, top_k)
    texts = [f"{h.doc.title} {h.doc.body}" for h in hits]
    return Retrieval(tuple(h.doc.id for h in hits), hits[0].score if hits else 0.0,
                     coverage(question, texts) if hits else 0.0, "kb")


def is_weak(found: Retrieval, settings: KbGapSettings) -> bool:
    """Retrieval that did not find the question's answer: a low best score or few of its key terms."""
    threshold = settings.min_logged_score if found.source == "logged" else settings.min_score
    low_score = found.best_score is not None and threshold is not None and found.best_score < threshold
    few_terms = found.coverage is not None and found.coverage < settings.min_coverage
    return low_score or few_terms


LOW_JUDGE_SCORE = 2.0  # mining's `low_judge_score` kind: the online judge's 1-5 scale


def failed_kinds(row: pd.Series) -> list[str]:
    """How a row failed in a way a missing document explains: abstained, refused (no injection), 👎, or a low
    online-judge score (a confident answer from the wrong document, which no user rated)."""
    kinds = []
    if bool(row.get("uncertain")):
        kinds.append("abstained")
    if bool(row.get("refusal")) and not bool(row.get("injection")):
        kinds.append("refused")
    if pd.notna(row.get("feedback")) and int(row["feedback"]) == -1:
        kinds.append("thumbs_down")
    score = row.get("judge_score")
    if score is not None and pd.notna(score) and float(score) <= LOW_JUDGE_SCORE:
        kinds.append("low_judge_score")
    return kinds


def failed_mask(frame: pd.DataFrame) -> pd.Series:
    """`failed_kinds` is not empty, for every row at once."""
    def column(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)

    flag = {name: column(name).fillna(False).astype(bool) for name in ("uncertain", "refusal", "injection")}
    return (flag["uncertain"] | (flag["refusal"] & ~flag["injection"]) | column("feedback").eq(-1)
            | column("judge_score").le(LOW_JUDGE_SCORE)).astype(bool)


def gap_rows(frame: pd.DataFrame, retriever: Retriever | None, settings: KbGapSettings,
             top_k: int = 3) -> pd.DataFrame:
    """The rows that point to a missing document, with their retrieval: `kinds`, `best_score`, `coverage`, `source`."""
    docs = {d.id: d for d in retriever.docs} if retriever is not None else {}
    answered = frame[frame["output"].notna() & frame["input"].fillna("").str.strip().ne("")]
    if "injection" in answered:  # an unknown flag (NaN) is no injection: astype(bool) alone would read it as one
        answered = answered[~answered["injection"].fillna(False).astype(bool)]
    # Only the rows that failed in one of the ways are looked at, and each distinct (question, logged
    # retrieval) is searched once: questions repeat a lot.
    failed = answered[failed_mask(answered)]
    seen: dict[tuple[str, object], Retrieval | None] = {}
    records = []
    for index, row in failed.iterrows():
        kinds = failed_kinds(row)
        key = (str(row["input"]), row.get("metadata") if isinstance(row.get("metadata"), str) else None)
        if key not in seen:
            seen[key] = retrieval_of(key[0], key[1], retriever, docs, top_k)
        found = seen[key]
        if found is None or not is_weak(found, settings):
            continue
        records.append({"index": index, "kinds": kinds, "best_score": found.best_score, "coverage": found.coverage,
                        "source": found.source, "documents": found.documents})
    if not records:
        return answered.iloc[0:0].assign(kinds=[], best_score=[], coverage=[], source=[], documents=[])
    extra = pd.DataFrame(records).set_index("index")
    return answered.loc[extra.index].join(extra)


def group_questions(questions: list[str], similarity: float) -> list[int]:
    """A group number per distinct question: TF-IDF cosine (topic words), average linkage, cut at `similarity`.
    Questions without topic words each stay alone."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import TfidfVectorizer

    labels = list(range(len(questions)))
    worded = [i for i, q in enumerate(questions) if key_terms(q)]
    if len(worded) < 2:
        return labels
    matrix = TfidfVectorizer(analyzer=key_terms, sublinear_tf=True).fit_transform([questions[i] for i in worded])
    model = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                    distance_threshold=1 - similarity + 1e-9)
    grouped = model.fit_predict(matrix.toarray())
    offset = len(questions)
    for position, i in enumerate(worded):
        labels[i] = offset + int(grouped[position])
    return labels


def gap_topic(asked: pd.Series, top: int = 4) -> str:
    """The words most of the gap's questions share, most frequent first; ties in the order the most asked
    question has them (so a one-question gap reads as its question's words)."""
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for question, n in asked.items():
        for word in key_terms(str(question)):
            first_seen.setdefault(word, len(first_seen))
        for word in set(key_terms(str(question))):
            counts[word] += int(n)
    return " ".join(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))[:top])


def nearest_document(asked: list[str], members: pd.DataFrame,
                     retriever: Retriever | None) -> tuple[str | None, float | None]:
    """The existing document that best matches any of the gap's questions, and its score."""
    if retriever is not None and members["source"].eq("kb").all():
        hits = [h for q in asked for h in retriever.search(q, 1)]
        best = max(hits, key=lambda h: h.score, default=None)
        return (best.doc.id, round(best.score, 3)) if best else (None, 0.0)
    scored = members.dropna(subset=["best_score"])
    if scored.empty:
        return None, None
    top = scored.loc[scored["best_score"].idxmax()]
    return (top["documents"][0] if top["documents"] else None), round(float(top["best_score"]), 3)


def find_gaps(frame: pd.DataFrame, retriever: Retriever | None, settings: KbGapSettings,
              top_k: int = 3) -> list[KbGapResult]:
    """The knowledge-base gaps of a window of flagged rows, most users first (then most questions, then topic)."""
    if not settings.enabled or settings.max_gaps == 0:
        return []
    rows = gap_rows(frame, retriever, settings, top_k)
    if rows.empty:
        return []
    rows = rows.assign(question=rows["input"].map(lambda t: " ".join(str(t).split())))
    distinct = sorted(rows["question"].unique())
    group_of = dict(zip(distinct, group_questions(distinct, settings.similarity), strict=True))
    rows["group"] = rows["question"].map(group_of)
    users = rows["user_hash"].fillna("row:" + rows["id"].astype(str)) if "user_hash" in rows else \
        "row:" + rows["id"].astype(str)
    gaps = []
    for _, members in rows.groupby("group", sort=True):
        asked = members["question"].value_counts()
        asked = asked.sort_index().sort_values(ascending=False, kind="stable")  # most asked, then alphabetical
        questions = asked.index.tolist()
        document, score = nearest_document(questions, members, retriever)
        kinds = Counter(k for ks in members["kinds"] for k in ks)
        covered = members["coverage"].dropna()
        gaps.append(KbGapResult(
            id=0, topic=gap_topic(asked) or questions[0][:60], questions=len(members),
            users=int(users[members.index].nunique()), kinds=dict(sorted(kinds.items())),
            examples=questions[:EXAMPLES], asked=questions[:MAX_ASKED], best_document=document, best_score=score,
            key_term_coverage=round(float(covered.mean()), 3) if len(covered) else None,
            source="logged" if members["source"].eq("logged").any() else "kb"))
    kept = [g for g in gaps if g.users >= settings.min_users]
    kept.sort(key=lambda g: (-g.users, -g.questions, g.topic))
    return [g.model_copy(update={"id": i + 1}) for i, g in enumerate(kept[: settings.max_gaps])]
