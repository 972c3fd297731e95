"""Failure mining: which interactions failed, how, and which failures belong together.

A failing interaction is a 👎, an error, a refusal, a toxic or biased answer, a followed injection, or a low
score from the online judge. Failures are grouped by worst kind and language, then clustered on
their conversation (the user turn before the last and the last one; TF-IDF over topic words, see
topics.py; k-means), and a cluster over 30% of all failures is split again. Each cluster is labelled
by its dominant kinds and the words that set it apart (analyze's stage may then name its topic with
an LLM), carries two example questions, and is ranked by impact = size × mean severity × 👎 share
(Laplace-smoothed, so a cluster of unrated errors still counts).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from promptloop.analyze.topics import conversation_texts, example_texts, topic_words
from promptloop.core.text import language
from promptloop.domain.results import ClusterResult
from promptloop.quality.injection import followed

# How bad each kind is; a row's severity is that of its worst kind.
KIND_SEVERITY: dict[str, float] = {
    "followed_injection": 5.0,
    "toxic": 5.0,
    "biased": 4.0,
    "error": 3.0,
    "thumbs_down": 2.0,
    "low_judge_score": 2.0,
    "refusal": 1.5,
}
KINDS = tuple(KIND_SEVERITY)
MAX_CLUSTER_SHARE = 0.3  # a cluster holding more of all failures is a grab-bag: it is split again
EXAMPLES_SHOWN = 2


def failure_kinds(frame: pd.DataFrame) -> pd.DataFrame:
    """One bool column per failure kind, for every row of `frame` (which carries the detector flags)."""
    has_output = frame["output"].notna()
    return pd.DataFrame(
        {
            "thumbs_down": frame["feedback"].eq(-1).fillna(False).astype(bool),
            "error": frame["error"].fillna("").astype(str).str.len().gt(0),
            "refusal": frame["refusal"].astype(bool) & has_output,
            "toxic": frame["toxic"].astype(bool) & has_output,
            "biased": _flag(frame, "biased") & has_output,
            # an attempt the answer carried out (quality/injection.py), not merely one it did not refuse
            "followed_injection": _followed_injection(frame) & has_output,
            "low_judge_score": frame.get("judge_score", pd.Series(np.nan, index=frame.index))
            .le(2)
            .fillna(False)
            .astype(bool),
        },
        index=frame.index,
    )


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    """A detector flag column as bool; a frame flagged before the column existed counts it False."""
    if column not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame[column].fillna(False).astype(bool)


def _followed_injection(frame: pd.DataFrame) -> pd.Series:
    """The `followed_injection` flag, computed from the question and answer when the frame lacks it."""
    if "followed_injection" in frame.columns:
        return _flag(frame, "followed_injection")
    return followed(frame["input"], frame["output"], _flag(frame, "injection"))


def mine_failures(frame: pd.DataFrame) -> pd.DataFrame:
    """The failing rows with their kinds (comma-joined, worst first) and severity."""
    kinds = failure_kinds(frame)
    failing = kinds.any(axis=1)
    rows = frame.loc[failing].copy()
    flags = kinds.loc[failing]
    ordered = sorted(KINDS, key=lambda k: -KIND_SEVERITY[k])
    joined = pd.Series("", index=rows.index, dtype=object)
    for kind in ordered:  # vectorised: one string concatenation per kind, not a Python loop per row
        joined = joined + np.where(flags[kind], kind + ",", "")
    rows["kinds"] = joined.str.rstrip(",")
    rows["severity"] = (
        np.column_stack([np.where(flags[k], KIND_SEVERITY[k], 0.0) for k in KINDS]).max(axis=1) if len(rows) else 0.0
    )
    return rows


def reported(cluster: ClusterResult, rank: int) -> ClusterResult:
    """The cluster as reported and stored: numbered by rank, rates rounded to 3 places."""
    return cluster.model_copy(update={"id": rank, "impact": round(cluster.impact, 3),
                                      "thumbs_down_share": round(cluster.thumbs_down_share, 3),
                                      "mean_severity": round(cluster.mean_severity, 3)})


def cluster_failures(
    failures: pd.DataFrame, max_clusters: int, seed: int, fit_sample: int = 20_000,
    max_share: float = MAX_CLUSTER_SHARE,
) -> tuple[np.ndarray, list[ClusterResult]]:
    """Assign each failure to a cluster; returns the assignments and the clusters ranked by impact.

    Failures are first grouped by their worst kind and their language, so a cluster never mixes
    an injection with a refusal or Korean with English; each group is then split by what was asked
    in the conversation (TF-IDF over topic words, k-means), its share of `max_clusters` in proportion
    to its size. A cluster holding more than `max_share` of all failures is split again.
    """
    if failures.empty:
        return np.zeros(0, dtype=int), []
    texts = conversation_texts(failures)
    vocabulary = Vocabulary.of(texts)
    groups = failures["kinds"].str.split(",").str[0] + "|" + texts.map(vocabulary.language)
    sizes = groups.value_counts()
    budget = {g: max(1, round(max_clusters * n / len(failures))) for g, n in sizes.items()}
    parts: list[np.ndarray] = []
    for group, k in budget.items():
        rows = np.flatnonzero((groups == group).to_numpy())
        parts.extend(rows[sub] for sub in split_by_text(texts.iloc[rows].tolist(), k, seed, fit_sample, vocabulary))
    parts = split_large(parts, texts, max_share * len(failures), seed, fit_sample, vocabulary)
    assignment = np.full(len(failures), -1)
    clusters: list[ClusterResult] = []
    for members in parts:
        assignment[members] = len(clusters)
        clusters.append(describe_cluster(len(clusters), failures.iloc[members], texts.iloc[members], vocabulary))
    ranked = sorted(clusters, key=lambda c: -c.impact)[:max_clusters]
    renumber = {c.id: rank for rank, c in enumerate(ranked)}
    # clusters past max_clusters (small groups) are reported as -1: mined, but not in a ranked cluster
    final = np.array([renumber.get(a, -1) for a in assignment])
    return final, [reported(c, renumber[c.id]) for c in ranked]


def split_large(parts: list[np.ndarray], texts: pd.Series, limit: float, seed: int, fit_sample: int,
                vocabulary: Vocabulary) -> list[np.ndarray]:
    """`parts` (row indices) with every part over `limit` rows split in two, again, until none is over it
    or what is left cannot be split (its texts are identical or have no topic words)."""
    done: list[np.ndarray] = []
    todo = list(parts)
    while todo:
        members = todo.pop()
        halves = split_by_text(texts.iloc[members].tolist(), 2, seed, fit_sample, vocabulary, n_init=1) \
            if len(members) > limit else [np.arange(len(members))]
        if len(halves) < 2:
            done.append(members)
        else:  # both halves are non-empty and smaller: this ends
            todo.extend(members[h] for h in halves)
    return sorted(done, key=lambda m: int(m[0]))  # in order of first row: the same input, the same clusters


@dataclass(frozen=True)
class Vocabulary:
    """Topic words and language of each distinct conversation, computed once (questions repeat a lot)."""

    tokens: dict[str, list[str]]
    document_frequency: Counter[str]
    total: int
    languages: dict[str, str]

    @classmethod
    def of(cls, texts: pd.Series) -> Vocabulary:
        counts = texts.value_counts()
        tokens = {t: topic_words(t) for t in counts.index}
        frequency: Counter[str] = Counter()
        for text, n in counts.items():
            for word in set(tokens[text]):
                frequency[word] += n
        return cls(tokens, frequency, len(texts), {t: language(t) for t in counts.index})

    def language(self, text: str) -> str:
        return self.languages[text]

    def analyzer(self, text: str) -> list[str]:
        """The TF-IDF analyzer: the words cached for `text`."""
        return self.tokens[text]

    def top_words(self, texts: pd.Series, top: int = 5) -> list[str]:
        """The words that set these questions apart: frequent among them, rarer elsewhere."""
        inside: Counter[str] = Counter()
        for text, n in texts.value_counts().items():
            for word in set(self.tokens[text]):
                inside[word] += n
        score = {w: n * np.log(self.total / self.document_frequency[w]) for w, n in inside.items() if n >= 2}
        return [w for w, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def split_by_text(texts: list[str], k: int, seed: int, fit_sample: int, vocabulary: Vocabulary,
                  n_init: int = 3) -> list[np.ndarray]:
    """Indices of `texts` split into at most k groups of similar conversations (TF-IDF, k-means)."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    distinct, inverse, counts = np.unique(np.asarray(texts, dtype=object), return_inverse=True, return_counts=True)
    k = max(1, min(k, len(texts) // 5, len(distinct)))
    if k == 1 or not any(vocabulary.tokens[t] for t in distinct):  # no topic words ("Yes.", "Okay"): one group
        return [np.arange(len(texts))]
    # Questions repeat: vectorise each distinct one once and weigh it by how often it was asked.
    matrix = TfidfVectorizer(analyzer=vocabulary.analyzer, min_df=1, sublinear_tf=True).fit_transform(distinct.tolist())
    rng = np.random.default_rng(seed)
    fit_rows = rng.choice(matrix.shape[0], size=min(fit_sample, matrix.shape[0]), replace=False)
    model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=n_init, batch_size=2048)
    labels = model.fit(matrix[fit_rows], sample_weight=counts[fit_rows]).predict(matrix)[inverse]
    return [np.flatnonzero(labels == c) for c in range(k) if (labels == c).any()]


def describe_cluster(number: int, members: pd.DataFrame, texts: pd.Series, vocabulary: Vocabulary) -> ClusterResult:
    """Label (dominant kinds, language, distinctive words), impact and examples of one cluster."""
    kind_share = {
        k: members["kinds"].str.contains(k, regex=False).mean() for k in KINDS
    }  # no kind name contains another
    dominant = [k for k, share in sorted(kind_share.items(), key=lambda kv: -kv[1]) if share >= 0.3]
    languages = texts.map(vocabulary.language)
    shares = languages[languages != "en"].value_counts() / max(1, len(languages))
    tagged = [str(lang) for lang, share in shares.items() if share >= 0.5]  # a language most questions are in
    rated = members["feedback"].isin([-1, 1]).sum()
    downs = members["feedback"].eq(-1).fillna(False).sum()
    down_share = float((downs + 1) / (rated + 2))
    severity = float(members["severity"].mean())
    example_ids = members.sort_values("severity", ascending=False, kind="stable")["id"].head(5).astype(str).tolist()
    language_tag = f" [{tagged[0]}]" if tagged else ""
    topic = " ".join(vocabulary.top_words(texts))
    return ClusterResult(id=number, label=f"{'/'.join(dominant) or 'mixed'}{language_tag}: {topic}", kinds=dominant,
                         size=len(members), impact=len(members) * severity * down_share,
                         thumbs_down_share=down_share, mean_severity=severity, example_ids=example_ids,
                         topic=topic or None, labelled_by="terms",
                         examples=example_texts(texts, members["severity"], EXAMPLES_SHOWN))


def cluster_conversations(failures: pd.DataFrame, assignment: np.ndarray, clusters: list[ClusterResult],
                          n: int) -> dict[int, list[str]]:
    """Up to `n` distinct conversations of each cluster, highest severity first (what its topic is named from)."""
    texts = conversation_texts(failures)
    return {c.id: example_texts(texts[assignment == c.id], failures["severity"][assignment == c.id], n)
            for c in clusters}


def with_topic(cluster: ClusterResult, topic: str) -> ClusterResult:
    """The cluster labelled with an LLM-named topic, after its kinds and language as before."""
    prefix = cluster.label.partition(": ")[0]  # kinds and language tag: never contain ": "
    return cluster.model_copy(update={"label": f"{prefix}: {topic}", "topic": topic, "labelled_by": "llm"})
