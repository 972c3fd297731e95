"""Detectors that flag texts of production logs: refusals, hedges, toxic or biased answers, injection attempts.

`analyze` turns the flags into `refusal_rate`, `uncertainty_rate`, `toxicity_rate`, `bias_rate` and
`injection_attempt_rate` over up to millions of rows (English and Korean); whether an attempt was
*followed* is read from the answer by `promptloop.quality.injection`. A detector is anything with a
`name` and a `flags(texts) -> bool Series` method, and optionally `unsure(texts) -> bool Series`
(the rows it cannot decide, for the LLM classifier layer). Three backends plug in through
`load_detector(spec, name)`:

- `builtin`: a `PatternDetector` read from `promptloop/quality/patterns/<name>.yaml`;
- `path/to/file.yaml`: a `PatternDetector` with a team's own patterns (same format);
- `module:attribute`: any object (or zero-argument factory / class) with `.flags`, e.g. a classifier.

Pattern files: `{name, description, patterns: [...], exclusions: [...], unsure: [...]}`. Patterns
are regexes, case-insensitive; a text is flagged when one matches. An exclusion *masks* the text it
matches before the patterns run again, so it vetoes exactly the matches it covers ("I'm not sure if
you've tried" hides that hedge, yet "... but I couldn't find it" in the same answer is still a
refusal). `unsure` cues never flag; `unsure()` returns the unflagged texts that match one, or that
a pattern matched before an exclusion masked it. `\\b`, `\\w`, `\\d`, `\\s` are ASCII: Hangul counts
as a non-word character, so `\\bidiot\\b` matches in "idiot같은"; Korean patterns use no `\\b`
(particles attach to words).

Speed: the patterns of a detector are joined into a few alternations (at most CHUNK_CHARS
characters each) run with Arrow's RE2 kernel (`pyarrow.compute.match_substring_regex`): a DFA that
scans each text once whatever the number of branches, where Python's `re` tries every branch at
every character. Exclusions run only on the rows the patterns flagged. One alternation per detector
was the rule until the lists grew past what RE2's DFA memory budget holds; beyond it RE2 falls back
to a far slower engine, hence the chunks. Figures: docs/detectors.md (`benchmarks/bench_detectors.py`).
RE2 has no look-around or backreferences: a pattern file that RE2 rejects still works, through
Python's `re` with the same ASCII/case-insensitive semantics, only ~100x slower (`.engine` says
which one runs).

Quality: docs/detectors.md reports precision/recall/F1 per detector and language on
tests/data/detectors_heldout.jsonl, a set the patterns were never tuned on (refusal and toxicity
F1 0.81-0.86, injection attempts 0.74-0.81, uncertainty 0.95-0.97, bias 0.57-0.79), how the sets
were made, and the tuning rounds. On detectors_labelled.jsonl and detectors_dev.jsonl, which they
were tuned on, they score 0.99-1.00: an upper bound. Recall is the weak side: expect real-world
rates to undercount, and read the flagged and `unsure()` rows before trusting a rate. Known blind
spots: paraphrases outside the listed phrasings, sarcasm and politely worded abuse, obfuscation
beyond spaced-out slurs, injections in other languages, encodings (base64) or split across turns.

Classifier backends (checked 2026-12 against the registry): there is no maintained toxicity
classifier that runs fully offline, without torch, for English *and* Korean. `alt-profanity-check`
(a linear SVM in its wheel, English only) was measured as a layer OR-ed with the patterns and not
adopted (docs/detectors.md: no gain on the dev set, ~9x the five pattern detectors' time, exact
scikit-learn/joblib pins). `detoxify` and transformer models need torch and download weights at run
time; `korcen`, `glin-profanity` and `better-profanity` are word lists or rules run per text in
Python. A team that has a classifier (e.g. an ONNX model it ships itself) plugs it in as
`analyze.detectors.toxicity: mypackage.toxicity:Detector` in params.yaml; its `flags` gets a text
Series and returns flags for the same index (`PluginDetector` checks that).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from promptloop.core.config import PLUGIN_SPEC, AnalyzeSettings, read_yaml
from promptloop.core.errors import InputError

PARAMS_SOURCE = "params.yaml"
PATTERN_KEYS = ("name", "description", "patterns", "exclusions", "unsure")
PYTHON_FLAGS = re.IGNORECASE | re.ASCII  # the fallback engine, with RE2's ASCII \b \w \d \s
_MASK = " "  # what an exclusion's match is replaced by
# RE2 builds its DFA within a fixed memory budget; one alternation of ~100 patterns with bounded
# repeats ({0,60}) outgrows it and RE2 falls back to a far slower engine (measured: 48 s instead of
# ~0.1 s for 20,000 texts). Patterns are therefore joined into alternations of at most this many
# characters, each scanned once: a deterministic split, so the flags never depend on timing.
CHUNK_CHARS = 8000


@runtime_checkable
class Detector(Protocol):
    """Flags texts: a bool Series on the texts' index; None, NaN and non-strings are False."""

    @property
    def name(self) -> str: ...

    def flags(self, texts: pd.Series) -> pd.Series: ...


class PatternError(ValueError):
    """A pattern list that cannot be used; `field` is e.g. `patterns[3]`."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# --- the regex engines ---------------------------------------------------------------------------


def _alternation(regexes: tuple[str, ...]) -> str:
    """One case-insensitive alternation of the regexes."""
    return "(?i)" + "|".join(f"(?:{r})" for r in regexes)


def _re2_accepts(regex: str) -> bool:
    """Whether Arrow's RE2 compiles `regex` (it compiles lazily, so match one empty string)."""
    try:
        pc.match_substring_regex(pa.array([""], pa.large_string()), regex)
    except pa.ArrowInvalid:
        return False
    return True


def check_regexes(regexes: tuple[str, ...], key: str) -> None:
    """Raise PatternError naming `key[i]` for a regex that neither RE2 nor Python's re compiles."""
    for i, regex in enumerate(regexes):
        if not isinstance(regex, str) or not regex.strip():
            raise PatternError(f"{key}[{i}]", f"expected a non-empty regex string, got {regex!r}")
        try:
            empty = re.search(f"(?:{regex})", "", PYTHON_FLAGS) is not None
        except re.error as exc:
            if not _re2_accepts(f"(?:{regex})"):
                raise PatternError(f"{key}[{i}]", f"invalid regular expression: {exc}") from None
            empty = pc.match_substring_regex(pa.array([""]), f"(?:{regex})")[0].as_py()
        if empty:
            raise PatternError(f"{key}[{i}]", f"{regex!r} matches the empty string, so it would match every text")


def _chunks(regexes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """`regexes` in order, cut into runs of at most CHUNK_CHARS characters (a longer regex alone)."""
    out: list[tuple[str, ...]] = []
    current: list[str] = []
    size = 0
    for regex in regexes:
        if current and size + len(regex) > CHUNK_CHARS:
            out.append(tuple(current))
            current, size = [], 0
        current.append(regex)
        size += len(regex)
    if current:
        out.append(tuple(current))
    return tuple(out)


@dataclass(frozen=True)
class CompiledRegex:
    """One alternation, run by RE2 over Arrow strings when RE2 accepts it, else by Python's re."""

    source: str

    @cached_property
    def re2(self) -> bool:
        return _re2_accepts(self.source)

    @cached_property
    def python(self) -> re.Pattern[str]:
        return re.compile(self.source, PYTHON_FLAGS)

    def contains(self, strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Whether each string has a match (null: False)."""
        if self.re2:
            found = pc.match_substring_regex(strings, self.source).fill_null(False)
            return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)
        search = self.python.search
        return np.fromiter((s is not None and search(s) is not None for s in strings.to_pylist()), bool, len(strings))

    def mask(self, strings: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """The strings with every match replaced by a space."""
        if self.re2:
            return pc.replace_substring_regex(strings, self.source, _MASK)
        sub = self.python.sub
        return pa.array([None if s is None else sub(_MASK, s) for s in strings.to_pylist()], pa.large_string())


@dataclass(frozen=True)
class ChunkedRegex:
    """Regexes as a few alternations (see CHUNK_CHARS): a text matches when any alternation does."""

    regexes: tuple[str, ...]

    @cached_property
    def parts(self) -> tuple[CompiledRegex, ...]:
        return tuple(CompiledRegex(_alternation(chunk)) for chunk in _chunks(self.regexes))

    @cached_property
    def python(self) -> re.Pattern[str]:
        """The one alternation in Python's re, for a single text (no DFA budget there)."""
        return re.compile(_alternation(self.regexes), PYTHON_FLAGS)

    @property
    def re2(self) -> bool:
        return all(part.re2 for part in self.parts)

    def contains(self, strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
        found = self.parts[0].contains(strings)
        for part in self.parts[1:]:
            found |= part.contains(strings)
        return found

    def mask(self, strings: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        for part in self.parts:
            strings = part.mask(strings)
        return strings

    def sub(self, text: str) -> str:
        """One text with every match masked, like `mask`."""
        for part in self.parts:
            text = part.python.sub(_MASK, text)
        return text


def arrow_strings(texts: pd.Series) -> pa.Array | pa.ChunkedArray:
    """The texts as Arrow strings; None, NaN and anything not a str become null."""
    if isinstance(texts.dtype, pd.StringDtype) and texts.dtype.storage == "pyarrow":
        return pa.array(texts.array)  # pandas' Arrow-backed strings, used as they are
    values = texts.to_numpy(dtype=object)
    is_str = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
    try:
        return pa.array(values, type=pa.large_string(), mask=~is_str)
    except (pa.ArrowException, UnicodeEncodeError):  # lone surrogates, e.g. from a JSON "\ud800"
        clean = [v.encode("utf-8", "replace").decode("utf-8") if ok else None
                 for v, ok in zip(values, is_str, strict=True)]
        return pa.array(clean, type=pa.large_string())


# --- the pattern backend -------------------------------------------------------------------------


@dataclass(frozen=True)
class PatternDetector:
    """Flags a text when one of `patterns` matches outside what `exclusions` match (case-insensitive)."""

    name: str
    patterns: tuple[str, ...]
    exclusions: tuple[str, ...] = ()
    description: str = field(default="", compare=False)
    weak: tuple[str, ...] = ()  # the file's `unsure:` cues: not enough to flag, enough to ask the LLM layer

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "exclusions", tuple(self.exclusions))
        object.__setattr__(self, "weak", tuple(self.weak))
        if not self.patterns:
            raise PatternError("patterns", "expected at least one regex")
        check_regexes(self.patterns, "patterns")
        check_regexes(self.exclusions, "exclusions")
        check_regexes(self.weak, "unsure")

    @property
    def regex(self) -> str:
        """The patterns as the one case-insensitive alternation that runs."""
        return _alternation(self.patterns)

    @cached_property
    def _patterns(self) -> ChunkedRegex:
        return ChunkedRegex(self.patterns)

    @cached_property
    def _exclusions(self) -> ChunkedRegex | None:
        return ChunkedRegex(self.exclusions) if self.exclusions else None

    @cached_property
    def _weak(self) -> ChunkedRegex | None:
        return ChunkedRegex(self.weak) if self.weak else None

    @property
    def engine(self) -> str:
        """`re2` (fast, vectorised) or `python` (a pattern RE2 rejects, e.g. a look-behind: slow)."""
        engines = [self._patterns] + [e for e in (self._exclusions, self._weak) if e is not None]
        return "re2" if all(e.re2 for e in engines) else "python"

    def flag(self, text: str) -> bool:
        """One text, by Python's re: an Arrow kernel compiles its regex on every call, which costs
        ~1.5 ms for a single string (the evaluation's per-answer checks) but nothing over a column."""
        if self._patterns.python.search(text) is None:
            return False
        if self._exclusions is None:
            return True
        return self._patterns.python.search(self._exclusions.sub(text)) is not None

    def flags(self, texts: pd.Series) -> pd.Series:
        """A bool Series on `texts.index`: True where a pattern matches outside the exclusions."""
        strings = arrow_strings(texts)
        hit = self._patterns.contains(strings)
        if self._exclusions is not None and hit.any():
            rows = np.flatnonzero(hit)
            hit[rows] = self._patterns.contains(self._exclusions.mask(strings.take(pa.array(rows))))
        return pd.Series(hit, index=texts.index, name=self.name, dtype=bool)

    def unsure(self, texts: pd.Series) -> pd.Series:
        """Texts the patterns cannot decide, for the LLM layer: not flagged, yet a pattern matched before an
        exclusion masked it (a quoted slur, "jailbreak an iPhone", a hedge about the user) or a weak `unsure:`
        cue matched ("I think", "probably", a group word next to "all")."""
        strings = arrow_strings(texts)
        raw = self._patterns.contains(strings)
        undecided = raw.copy()
        if self._weak is not None:
            undecided |= self._weak.contains(strings)
        if self._exclusions is not None and raw.any():
            rows = np.flatnonzero(raw)
            raw[rows] = self._patterns.contains(self._exclusions.mask(strings.take(pa.array(rows))))
        return pd.Series(undecided & ~raw, index=texts.index, name=self.name, dtype=bool)


def parse_pattern_file(data: object, source: str | Path, name: str | None = None) -> PatternDetector:
    """A PatternDetector from a parsed pattern file; a problem is an InputError naming the field."""
    if not isinstance(data, dict):
        raise InputError(source, f"expected a mapping with {', '.join(PATTERN_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(PATTERN_KEYS))
    if unknown:
        raise InputError(source, "unknown key", field=unknown[0])
    for key in ("name", "description", "patterns"):
        if key not in data:
            raise InputError(source, "missing key", field=key)
    if not isinstance(data["name"], str) or not data["name"]:
        raise InputError(source, f"expected a non-empty string, got {data['name']!r}", field="name")
    if not isinstance(data["description"], str):
        raise InputError(source, f"expected a string, got {data['description']!r}", field="description")
    lists = {key: data.get(key) or [] for key in ("patterns", "exclusions", "unsure")}
    for key, value in lists.items():
        if not isinstance(value, list):
            raise InputError(source, f"expected a list of regexes, got {type(value).__name__}", field=key)
    try:
        return PatternDetector(name or data["name"], tuple(lists["patterns"]), tuple(lists["exclusions"]),
                               description=data["description"], weak=tuple(lists["unsure"]))
    except PatternError as exc:
        raise InputError(source, exc.message, field=exc.field) from None


def load_pattern_detector(path: Path, name: str | None = None) -> PatternDetector:
    """Read a pattern file (YAML); `name` overrides the file's `name`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    return parse_pattern_file(read_yaml(path), path, name)


def builtin_names() -> list[str]:
    """The detectors shipped in promptloop/patterns/."""
    folder = resources.files("promptloop.quality") / "patterns"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


@cache
def builtin_detector(name: str) -> PatternDetector:
    """The built-in pattern detector `name` (refusal, toxicity, injection); immutable, so cached."""
    resource = resources.files("promptloop.quality") / "patterns" / f"{name}.yaml"
    if not re.fullmatch(r"[\w-]+", name) or not resource.is_file():
        raise InputError(PARAMS_SOURCE, f"no built-in detector {name!r} (built-in: {', '.join(builtin_names())})",
                         field=f"analyze.detectors.{name}")
    return parse_pattern_file(yaml.safe_load(resource.read_text(encoding="utf-8")), f"promptloop/patterns/{name}.yaml")


# --- plugged-in backends -------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginDetector:
    """A user's backend (`module:attribute`) held to the Detector contract: bool flags on the same index."""

    name: str
    backend: Any

    def flags(self, texts: pd.Series) -> pd.Series:
        """The backend's flags as a bool Series on `texts.index` (missing values: False)."""
        return self._checked(self.backend.flags(texts), texts, "flags")

    def __getattr__(self, attribute: str) -> Any:
        """`unsure` (and any other optional method) only when the backend has it, so that
        `getattr(detector, "unsure", None)` tells whether the backend can say which rows it cannot decide."""
        if attribute == "unsure" and callable(getattr(self.backend, "unsure", None)):
            return lambda texts: self._checked(self.backend.unsure(texts), texts, "unsure")
        raise AttributeError(attribute)

    def _checked(self, out: Any, texts: pd.Series, method: str) -> pd.Series:
        if isinstance(out, pd.Series):
            if not out.index.equals(texts.index):
                raise ValueError(f"detector {self.name!r}: {method}() returned a Series on another index")
            out = out.to_numpy()
        values = np.asarray(out, dtype=object)
        if values.shape != (len(texts),):
            raise ValueError(f"detector {self.name!r}: {method}() returned {values.shape}, expected ({len(texts)},)")
        return pd.Series(pd.array(values, dtype="boolean").fillna(False).to_numpy(dtype=bool),
                         index=texts.index, name=self.name, dtype=bool)


def load_plugin(spec: str, name: str) -> PluginDetector:
    """Import `module:attribute`; a class or factory without `.flags` is called with no arguments."""
    where = f"analyze.detectors.{name}"
    module_name, _, attribute = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise InputError(PARAMS_SOURCE, f"cannot load {spec!r}: {exc}", field=where) from None
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "flags")):
        try:
            obj = obj()
        except Exception as exc:  # a user's factory: whatever it raises, say which spec failed
            raise InputError(PARAMS_SOURCE, f"{spec}() failed: {type(exc).__name__}: {exc}", field=where) from None
    if not callable(getattr(obj, "flags", None)):
        raise InputError(PARAMS_SOURCE, f"{spec} has no flags(texts) method", field=where)
    return PluginDetector(name, obj)


def load_detector(spec: str, name: str, root: Path | None = None) -> Detector:
    """`builtin`, a pattern file (.yaml/.yml, relative to `root` if given) or `module:attribute`."""
    spec = spec.strip()
    if spec == "builtin":
        return builtin_detector(name)
    if spec.lower().endswith((".yaml", ".yml")):
        path = Path(spec).expanduser()
        path = root / path if root is not None and not path.is_absolute() else path
        if not path.is_file():
            raise InputError(PARAMS_SOURCE, f"pattern file not found: {path}", field=f"analyze.detectors.{name}")
        return load_pattern_detector(path, name)
    if PLUGIN_SPEC.fullmatch(spec):
        return load_plugin(spec, name)
    raise InputError(PARAMS_SOURCE, f"expected 'builtin', a .yaml pattern file or 'module:attribute', got {spec!r}",
                     field=f"analyze.detectors.{name}")


# --- scoring on labelled examples ----------------------------------------------------------------


@dataclass(frozen=True)
class DetectorScore:
    """Precision, recall and F1 of a detector on labelled texts; support is the number of positives."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int
    false_positives: list[str]
    false_negatives: list[str]


def score_detector(detector: Detector, labelled: pd.DataFrame) -> DetectorScore:
    """Score `detector` on rows with `text` and `label` (bool), with scikit-learn's metrics."""
    from sklearn.metrics import precision_recall_fscore_support

    if labelled.empty:
        raise ValueError(f"no labelled rows to score detector {detector.name!r}")
    truth = labelled["label"].astype(bool).to_numpy()
    predicted = detector.flags(labelled["text"]).to_numpy(dtype=bool)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="binary", zero_division=0)
    texts = labelled["text"].astype(str).to_numpy()
    return DetectorScore(detector.name, float(precision), float(recall), float(f1), int(truth.sum()),
                         list(texts[predicted & ~truth]), list(texts[~predicted & truth]))


def score_by_language(labelled: pd.DataFrame, detectors: dict[str, Detector]) -> list[dict[str, Any]]:
    """P/R/F1 of each detector on its rows of `labelled`, per language: one dict per detector x language."""
    rows = []
    for name, detector in detectors.items():
        own = labelled[labelled["detector"] == name]
        for lang in sorted(own["lang"].unique()):
            subset = own[own["lang"] == lang].reset_index(drop=True)
            score = score_detector(detector, subset)
            rows.append({"detector": name, "lang": lang, "precision": score.precision, "recall": score.recall,
                         "f1": score.f1, "support": score.support, "rows": len(subset),
                         "false_positives": score.false_positives, "false_negatives": score.false_negatives})
    return rows


def load_labelled(path: Path, detector: str | None = None) -> pd.DataFrame:
    """Labelled examples (JSON Lines: detector, text, label, lang), optionally one detector's only."""
    from promptloop.core.jsonl import read_jsonl

    rows = []
    for number, row in read_jsonl(Path(path)):
        for key, kind in (("detector", str), ("text", str), ("label", bool)):
            if not isinstance(row.get(key), kind):
                raise InputError(
                    path, f"expected a {kind.__name__}, got {row.get(key)!r}", field=f"line {number}.{key}"
                )
        rows.append({"detector": row["detector"], "text": row["text"], "label": row["label"],
                     "lang": str(row.get("lang", ""))})
    frame = pd.DataFrame(rows, columns=["detector", "text", "label", "lang"]).astype({"label": bool})
    if detector is not None:
        frame = frame[frame["detector"] == detector].reset_index(drop=True)
    return frame


# The flag a detector sets on a row -> the detector's name under params.yaml `analyze.detectors`.
DETECTOR_OF_FLAG = {"refusal": "refusal", "uncertain": "uncertainty", "toxic": "toxicity", "biased": "bias",
                    "injection": "injection"}


def detectors_of(settings: AnalyzeSettings, root: Path) -> dict[str, Detector]:
    """The configured detectors, keyed by the flag each sets (refusal, uncertain, toxic, biased, injection)."""
    return {flag: load_detector(settings.detectors[name], name, root) for flag, name in DETECTOR_OF_FLAG.items()}
