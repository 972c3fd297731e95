"""PII redaction for production LLM logs (English and Korean): typed placeholders, counts per kind.

US social security numbers, phone numbers (any `+` number; US, Korean, UK, German, French national
formats; US 7-digit local numbers), credit-card numbers (Luhn), IBANs (mod-97), passport numbers
(next to a context word), emails, IPv4/IPv6 addresses, Korean resident registration numbers (RRN),
US street and Korean road-name addresses, and configurable extra patterns are replaced by `<SSN>`,
`<PHONE>`, `<CARD>`, `<IBAN>`, `<PASSPORT>`, `<EMAIL>`, `<IP>`, `<RRN>`, `<ADDRESS>`, `<ORDER_ID>` ...

The recognizers are Microsoft Presidio's (`presidio-analyzer`, phones through Google's
`phonenumbers`), with promptloop's Korean, US-local-phone and address recognizers written as Presidio
recognizers; `usaddress` (a CRF model inside its wheel) confirms US addresses. All run offline: no
spaCy model (the recognizers are called without Presidio's NLP engine) and no public-suffix download
(tldextract reads its bundled snapshot). `pii_recognizers` says which recognizer covers what.

How it stays fast: a Presidio pass costs milliseconds per text (mostly `phonenumbers`), far too
slow for the 1M rows `collect` handles, so every text is first checked for cheap cues
(`pii_recognizers.could_hold_pii`: a 7+ char digit run, '@', two ':' around hex, a house number
before a capitalised word, 로/길 before a number, a passport word; in `redact_series` one RE2 pattern
over the whole Arrow column), and only texts with a cue run the recognizers. The cues are a superset
of what every recognizer can accept (tests check the gated and ungated runs agree), so recall does
not depend on them. A distinct text runs the recognizers once per column; repeats replay it. The
extra patterns, as one alternation, run over every text first. Overlapping findings are replaced as
one span, so no fragment of either survives. Placeholders hold no digit, '@' or ':'. Before
Presidio, hand-written regexes did 1M rows x 2 columns in ~5 s; docs/pii.md ("Speed") has what
this costs now, measured, with the command.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from promptloop.core.errors import InputError
from promptloop.quality.pii_recognizers import Finding, could_hold_pii, could_hold_pii_column, find_pii

PII_KINDS = ("EMAIL", "PHONE", "RRN", "CARD", "IP", "SSN", "IBAN", "PASSPORT", "ADDRESS")
PLACEHOLDERS: dict[str, str] = {kind: f"<{kind}>" for kind in PII_KINDS}

PARAMS_SOURCE = "params.yaml"
EXTRA_FIELD = "collect.extra_pii_patterns"
_KIND_NAME = re.compile(r"[A-Z][A-Z0-9_]*")

@dataclass(frozen=True)
class Redactor:
    """Replaces PII in texts by typed placeholders; `extra_patterns` maps a kind name to a regex."""

    extra_patterns: Mapping[str, str] = field(default_factory=dict)
    _extras: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = dict(self.extra_patterns or {})
        extras = {name: _checked_extra(name, regex) for name, regex in given.items()}
        object.__setattr__(self, "extra_patterns", given)  # a copy: later edits to the caller's dict do nothing
        object.__setattr__(self, "_extras", _compile_extras(extras))

    @property
    def placeholders(self) -> dict[str, str]:
        """Kind -> placeholder, built-in kinds and the extra ones."""
        return {**PLACEHOLDERS, **{name: f"<{name}>" for name in self.extra_patterns}}

    def redact_text(self, text: str | None) -> tuple[str | None, Counter[str]]:
        """`text` with PII replaced, and how many of each kind; None (or a non-str) comes back as is."""
        counts: Counter[str] = Counter()
        if not isinstance(text, str):
            return text, counts
        return self._redactor(counts)(text), counts

    def redact_series(self, values: pd.Series) -> tuple[pd.Series, Counter[str]]:
        """Redact every str value of `values` (same index, name, str dtype); nulls and non-str stay."""
        counts: Counter[str] = Counter()
        dtype = values.dtype
        text_like = dtype == object or isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype))  # noqa: E721 (a dtype)
        if not text_like:
            return values.copy(), counts
        redact = self._redactor(counts)
        raw = values.to_numpy(dtype=object)
        if self._extras is not None:  # the extras run on every text
            return _like(values, [redact(v) if isinstance(v, str) else v for v in raw]), counts
        # RE2 over the whole column finds the few texts that could hold PII (~10x cheaper than a
        # Python regex search per text); only those are looked at one by one.
        candidates = could_hold_pii_column(raw)
        out = raw.copy()
        for i in np.flatnonzero(candidates):
            out[i] = redact(raw[i])
        return _like(values, out), counts

    def redact_labels(self, values: pd.Series) -> tuple[pd.Series, Counter[str]]:
        """Like `redact_series` for columns of few distinct values (app, model, version): each is redacted
        once, and its redactions counted once per row that holds it."""
        counts: Counter[str] = Counter()
        distinct = {v for v in values.to_numpy(dtype=object) if isinstance(v, str)}
        changed: dict[str, tuple[str, Counter[str]]] = {}
        for value in distinct:
            redacted, found = self.redact_text(value)
            if found:
                changed[value] = (str(redacted), found)
        if not changed:
            return values.copy(), counts
        for value, (_, found) in changed.items():
            rows = int((values == value).sum())
            counts.update({kind: n * rows for kind, n in found.items()})
        out = [changed[v][0] if isinstance(v, str) and v in changed else v for v in values.to_numpy(dtype=object)]
        return _like(values, out), counts

    def _redactor(self, counts: Counter[str]) -> Callable[[str], str]:
        """A str -> str function that redacts and adds what it replaced to `counts`."""
        placeholders = self.placeholders
        replace = _replacer(placeholders, counts)
        extras = self._extras.sub if self._extras is not None else None

        # Logs repeat texts (a template's greeting, a pasted signature): each distinct one that needs
        # the recognizers runs them once per call; a repeat replays its result and counts.
        seen: dict[str, tuple[str, Counter[str]]] = {}

        def redact(text: str) -> str:
            if extras is not None:
                text = extras(replace, text)
            if not could_hold_pii(text):  # most texts: one regex search, no recognizer
                return text
            if text not in seen:
                found: Counter[str] = Counter()
                seen[text] = (_replace_findings(text, find_pii(text), placeholders, found), found)
            redacted, found = seen[text]
            counts.update(found)
            return redacted

        return redact


def build_redactor(extra_patterns: Mapping[str, str] | None) -> Redactor:
    """A Redactor for `collect.extra_pii_patterns`; a bad kind name or regex is an InputError."""
    return Redactor(dict(extra_patterns or {}))


def luhn_valid(digits: str) -> bool:
    """True when `digits` (ASCII digits only) passes the Luhn checksum of card numbers."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def keyed_hash(values: pd.Series, key: bytes) -> pd.Series:
    """HMAC-SHA256 of each non-null value (as str), first 32 hex chars; nulls stay, index kept."""
    if not key:
        raise ValueError("keyed_hash needs a non-empty key")
    raw = values.to_numpy(dtype=object)
    present = values.notna().to_numpy()
    texts = [v if isinstance(v, str) else str(v) for v in raw[present]]
    digests = {t: keyed_digest(t, key) for t in set(texts)}
    out = raw.copy()
    out[present] = [digests[t] for t in texts]
    return _like(values, out)


def keyed_digest(text: str, key: bytes) -> str:
    """HMAC-SHA256 of one text, first 32 hex chars (what `keyed_hash` gives each value)."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _like(values: pd.Series, out: list[object] | np.ndarray) -> pd.Series:
    """`out` as a Series with the index and name of `values`; a str dtype stays, others become object."""
    if isinstance(values.dtype, pd.StringDtype):  # pd.array builds it ~3x faster than pd.Series
        return pd.Series(pd.array(out, dtype=values.dtype), index=values.index, name=values.name)
    return pd.Series(out, index=values.index, name=values.name, dtype=object)


def _replacer(placeholders: Mapping[str, str], counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    """The `re.sub` callable for the extra patterns: the kind's placeholder, counted."""

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup or ""
        counts[kind] += 1
        return placeholders[kind]

    return replace


def _replace_findings(text: str, findings: list[Finding], placeholders: Mapping[str, str], counts: Counter[str]) -> str:
    """`text` with each (non-overlapping, sorted) finding replaced by its kind's placeholder, counted."""
    if not findings:
        return text
    pieces: list[str] = []
    last = 0
    for finding in findings:
        # NUMBER (digit runs of a text too long to read) has no entry: it is no kind one can plant
        pieces += (text[last : finding.start], placeholders.get(finding.kind, f"<{finding.kind}>"))
        counts[finding.kind] += 1
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces)


def _checked_extra(name: object, regex: object) -> str:
    """The extra pattern ready to join the alternation, or an InputError naming its field."""
    where = f"{EXTRA_FIELD}.{name}"
    if not isinstance(name, str) or not _KIND_NAME.fullmatch(name):
        raise InputError(PARAMS_SOURCE, "kind name must be upper case letters, digits and _ (like ORDER_ID)", where)
    if name in PLACEHOLDERS:
        raise InputError(PARAMS_SOURCE, f"{name} is a built-in kind; pick another name", where)
    if not isinstance(regex, str) or not regex:
        raise InputError(PARAMS_SOURCE, "must be a non-empty regex string", where)
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise InputError(PARAMS_SOURCE, f"invalid regex: {exc}", where) from None
    if compiled.groups:
        raise InputError(PARAMS_SOURCE, "use non-capturing groups (?:...) only", where)
    if any(m.end() == m.start() for m in compiled.finditer("aZ1 _-.@:가\n")) or compiled.fullmatch(""):
        raise InputError(PARAMS_SOURCE, "regex matches the empty string", where)
    return _scoped_flags(regex)


def _compile_extras(extras: Mapping[str, str]) -> re.Pattern[str] | None:
    """The checked extra patterns as one alternation with a named group per kind (None if none)."""
    if not extras:
        return None
    try:
        return re.compile("|".join(f"(?P<{name}>{regex})" for name, regex in extras.items()))
    except re.error as exc:
        raise InputError(PARAMS_SOURCE, f"the patterns do not combine: {exc}", EXTRA_FIELD) from None


def _scoped_flags(regex: str) -> str:
    """Leading global flags `(?i)x` as a scoped group `(?i:x)`, so the regex can sit in an alternation."""
    flags = re.match(r"\(\?([aiLmsux]+)\)", regex)
    if not flags:
        return regex
    rest = regex[flags.end() :]
    return f"(?{flags.group(1)}:{rest}\n)" if "x" in flags.group(1) else f"(?{flags.group(1)}:{rest})"
