"""The PII recognizers behind `Redactor`: Microsoft Presidio's, plus Korean, local-phone and address ones.

Presidio (`presidio-analyzer`) recognizers are called directly, without its AnalyzerEngine: the engine
needs an NLP pipeline per text only to boost scores by context words, which `_accepted` does here with
a plain window search. So no spaCy model is loaded or downloaded, and no per-row NLP pass runs.

Kinds and where they come from:
- SSN: Presidio `UsSsnRecognizer` (its invalidation of 000/666/all-same groups); the dotted/dashed
  3-2-4 form on its own, the weak forms (9 digits in a row, 5-4, 3-6) only next to a context word.
- PHONE: Presidio `PhoneRecognizer` (Google's `phonenumbers`, leniency VALID) for the US, KR, GB, DE
  and FR, and any `+<country code>` number; `phonenumbers` rejects 7-digit US local numbers (no area
  code), so `UsLocalPhoneRecognizer` takes `555-0134` alone and `555 0134` / `555.0134` next to a
  context word; `KrPhoneRecognizer` is the Korean pattern used before Presidio (010, 02, 031 ...).
- CARD: Presidio `CreditCardRecognizer` (Luhn). IBAN: Presidio `IbanRecognizer` (mod-97 checksum).
- PASSPORT: Presidio's US, UK, DE, IT, ES, IN and KR passport recognizers, next to a context word only
  (their patterns are 8-9 letters and digits: alone they are any order or ticket number).
- EMAIL: Presidio `EmailRecognizer`, its domain (after the '@') checked against tldextract's bundled
  suffix list only (`OFFLINE_TLD`: no fetch of the list, no cache file); `UrlEncodedEmailRecognizer`
  for an address written into a URL (`ann%40example.com`), checked alike. IP: Presidio `IpRecognizer` (v4 and v6).
- RRN: `KrRrnRecognizer`, the pattern used before Presidio (gender digit 1-8, so foreigners' numbers
  too) with a calendar check of its birth date; Presidio's own accepts 1-4 only.
- ADDRESS: US street addresses: a candidate-span regex (house number ... street suffix, then unit,
  city, state, ZIP) confirmed by `usaddress`, a CRF model shipped inside its wheel; Korean road-name
  addresses (`세종대로 110`, `강남대로94길 21`) by `KrRoadAddressRecognizer`.

Presidio's patterns use `\b`, which never holds between Hangul and a digit ("번호는010-..."), so the
recognizers read a same-length copy of the text with Hangul and CJK letters turned into ';'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from presidio_analyzer import EntityRecognizer

# Presidio entity -> our kind
KIND_OF_ENTITY: dict[str, str] = {
    "US_SSN": "SSN",
    "PHONE_NUMBER": "PHONE",
    "US_LOCAL_PHONE": "PHONE",
    "KR_PHONE": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "EMAIL_ADDRESS": "EMAIL",
    "IP_ADDRESS": "IP",
    "KR_RRN": "RRN",
    "US_ADDRESS": "ADDRESS",
    "KR_ADDRESS": "ADDRESS",
    **{entity: "PASSPORT" for entity in ("US_PASSPORT", "UK_PASSPORT", "DE_PASSPORT", "IT_PASSPORT",
                                         "ES_PASSPORT", "IN_PASSPORT", "KR_PASSPORT")},
}
# Where two findings overlap, the one of the earlier kind names the merged span.
KIND_ORDER = ("RRN", "CARD", "SSN", "IBAN", "PASSPORT", "PHONE", "IP", "EMAIL", "ADDRESS", "NUMBER")

MIN_SCORE = 0.4  # Presidio's scores: a validated checksum is 1.0, phonenumbers 0.4, weak regexes 0.05-0.1
CONTEXT_BOOST = 0.35  # what Presidio's LemmaContextAwareEnhancer adds for a context word nearby
CONTEXT_BEFORE, CONTEXT_AFTER = 40, 20  # characters searched for a context word around a finding
PASSPORT_CONTEXT = ("passport", "passeport", "reisepass", "pasaporte", "passaporto", "pass-nr", "여권")
KOREAN_CONTEXT = {"US_SSN": ("사회보장",), "PHONE_NUMBER": ("전화", "연락", "번호", "핸드폰", "휴대폰")}

REGIONS = ("US", "KR", "GB", "DE", "FR")
# phonenumbers takes short codes ("1680") as valid numbers; a person's number has 7+ digits (555-0134).
MIN_PHONE_DIGITS = 7
WINDOW_MARGIN = 3
WINDOW_PIECE = (256, 64)  # digit-run windows longer than 256 chars are read in pieces overlapping by 64
# A text whose digit-run windows add up to more than this is not read by the numeric recognizers
# (~3 s per 10,000 chars of digit groups): each of its 7+ digit runs is replaced as <NUMBER>.
MAX_DIGIT_WINDOW_CHARS = 20_000
TEXT_PIECE = (4096, 512)  # and whole texts in pieces of 4,096 overlapping by 512 (US addresses are long)
# Korean nationwide company numbers (1588-1234 ...) are not a person's.
_KR_COMPANY_NUMBER = re.compile(r"1[568]\d\d[ .\-]?\d{4}")
_HANGUL_CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3]")

# --- the prefilter: a text none of these cues match holds nothing any recognizer accepts (tested) ---
# Every numeric kind (phone, SSN, RRN, card, IPv4, IBAN's digits) lies in a 7+ char run of digits
# and separators; emails need '@' (or `%40`, in a URL); IPv6 two ':' around hex; passports a context
# word (they are accepted only next to one); a US address a house number before a capitalised word,
# a Korean one 로/길 before a number. Each cue starts with a character set or is a substring test, so `re`
# skips to candidates at C speed (one alternation of them all cost ~40x more per text).
_DIGIT_RUN = re.compile(r"[\d+(\[][\d\s.()\[\]\-+/~]{5,}\d")
_IPV6_CUE = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IP_CUE = re.compile(rf"{_DIGIT_RUN.pattern}|{_IPV6_CUE.pattern}")
_US_ADDRESS_CUE = re.compile(r"[0-9][A-Za-z]?\s+[A-Z0-9]")  # house number, then the street's first word
_KR_ADDRESS_CUE = re.compile(r"[로길]\s?\d")
_PASSPORT_CUE = re.compile(r"(?i:passport|passeport|reisepass|pasaporte|passaporto|pass-nr)|여권")
_PASS_STEM = re.compile("[Pp][Aa][Ss]")  # starts every Latin _PASSPORT_CUE word, in any case
# _DIGIT_RUN for ASCII texts: a character set of ASCII digits first lets `re` skip ~3x faster
_DIGIT_RUN_ASCII = re.compile(r"[0-9+(\[][0-9\s.()\[\]\-+/~]{5,}[0-9]")


def could_hold_pii(text: str) -> bool:
    """The cheap test run on every text: False means no recognizer can accept anything in it."""
    if "@" in text or "%40" in text:  # an address, or one written into a URL
        return True
    ascii_only = text.isascii()  # then [0-9] is \d, and Hangul cues cannot match
    if (_DIGIT_RUN_ASCII if ascii_only else _DIGIT_RUN).search(text) or _US_ADDRESS_CUE.search(text):
        return True
    if not ascii_only and (_KR_ADDRESS_CUE.search(text) or "여권" in text):
        return True
    if ":" in text and _IPV6_CUE.search(text):
        return True
    return _PASS_STEM.search(text) is not None


# `could_hold_pii` as one RE2 pattern (RE2 has no backtracking, so one alternation is cheap):
# \p{Nd} is Python's \d, _SPACE Python's \s (str.isspace), so it matches wherever a cue does.
_SPACE = r"[\t\n\v\f\r\x1c-\x1f\x85\p{Z}]"
_RE2_PREFILTER = "|".join((
    "@",
    "%40",
    rf"[\p{{Nd}}+(\[](?:\p{{Nd}}|{_SPACE}|[.()\[\]\-+/~]){{5,}}\p{{Nd}}",
    rf"[0-9][A-Za-z]?{_SPACE}+[A-Z0-9]",
    rf"[로길]{_SPACE}?\p{{Nd}}",
    "여권",
    ":[0-9A-Fa-f]{0,4}:",
    "[Pp][Aa][Ss]",
))


def could_hold_pii_column(values: np.ndarray) -> np.ndarray:
    """`could_hold_pii` of each str in `values` (objects) at C speed; non-str values are False."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pa.array([v if isinstance(v, str) else None for v in values], type=pa.large_string())
    found = pc.match_substring_regex(texts, _RE2_PREFILTER)
    return np.asarray(found.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


@dataclass(frozen=True, order=True)
class Finding:
    """One accepted recognizer result: a span of the text and our kind for it."""

    start: int
    end: int
    kind: str
    score: float


def find_pii(text: str, *, gated: bool = True) -> list[Finding]:
    """Every accepted finding in `text`, overlapping ones merged into one span.

    `gated` runs each recognizer only on texts holding its cue (what `could_hold_pii` joins), and
    the numeric ones only on windows around digit runs; the ungated run (every recognizer over the
    whole text) exists to test that the gates and windows lose nothing."""
    if gated and not could_hold_pii(text):
        return []
    # Same length, so spans stay valid for `text`; ';' (not a space: no phone separator, no email
    # character) keeps "12길 34" two numbers and "번호는010...메일은a@b.c" apart.
    shadow = _HANGUL_CJK.sub(";", text)
    lowered = text.lower()
    found: list[Finding] = []
    windows = _digit_windows(shadow) if gated else []
    too_long = sum(end - start for start, end in windows) > MAX_DIGIT_WINDOW_CHARS
    if too_long:  # a hostile megabyte of numbers: every long digit run goes, unrecognized
        found += [Finding(start + WINDOW_MARGIN, min(end - WINDOW_MARGIN, len(text)), "NUMBER", 1.0)
                  for start, end in windows]
    for recognizer, cue in _recognizers():
        if gated and cue is not None and cue.search(text) is None:
            continue
        if too_long and cue is _DIGIT_RUN:
            continue
        source = text if getattr(recognizer, "reads_hangul", False) else shadow
        if gated and cue is _DIGIT_RUN:
            spans = [piece for window in windows for piece in _pieces(*window, *WINDOW_PIECE)]
        else:
            spans = _pieces(0, len(source), *TEXT_PIECE)
        for start, end in spans:
            for result in recognizer.analyze(source[start:end], recognizer.supported_entities, None):  # type: ignore[arg-type]
                result.start, result.end = result.start + start, result.end + start
                finding = _accepted(result, recognizer, text, lowered)
                if finding is not None:
                    found.append(finding)
    return merge_overlaps(found)


def _pieces(start: int, end: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) as pieces of at most `size` chars, each overlapping the next by `overlap`.

    Presidio de-duplicates a call's results pairwise and `phonenumbers` slows down on long runs, so
    one call over a megabyte of digits would take minutes; pieces keep the cost linear. A value up
    to `overlap` chars long lies whole in some piece; one cut by a piece edge is a partial finding
    that merges with the whole one."""
    if end - start <= size:
        return [(start, end)]
    return [(at, min(at + size, end)) for at in range(start, end - overlap, size - overlap)]


def _digit_windows(text: str) -> list[tuple[int, int]]:
    """Each digit run of 7+ digits with WINDOW_MARGIN characters around it (for lookarounds).

    A Presidio pass over a 200-char text costs ~6 ms for phonenumbers' five regions, over a window
    a fraction of that; every numeric kind has 7+ digits (phones shorter are not accepted)."""
    windows = []
    for run in _DIGIT_RUN.finditer(text):
        if sum(ch.isdigit() for ch in run.group()) >= MIN_PHONE_DIGITS:
            start, end = max(0, run.start() - WINDOW_MARGIN), min(len(text), run.end() + WINDOW_MARGIN)
            # A window never cuts through digits: "0415١٢٣#010" is one phone with an extension, and a
            # window ending inside "010" left its last digit unredacted.
            while start > 0 and text[start - 1].isdigit():
                start -= 1
            while end < len(text) and text[end].isdigit():
                end += 1
            windows.append((start, end))
    return windows


def merge_overlaps(found: list[Finding]) -> list[Finding]:
    """Overlapping findings as one span (so no fragment of either survives), named by the best kind."""
    merged: list[Finding] = []
    for finding in sorted(found):
        if merged and finding.start < merged[-1].end:
            last = merged[-1]
            best = min((last, finding), key=lambda f: (KIND_ORDER.index(f.kind), -(f.end - f.start)))
            merged[-1] = Finding(last.start, max(last.end, finding.end), best.kind, max(last.score, finding.score))
        else:
            merged.append(finding)
    return merged


def _accepted(result: Any, recognizer: EntityRecognizer, text: str, lowered: str) -> Finding | None:
    """The result as a Finding if its score, raised by a context word nearby, reaches MIN_SCORE."""
    kind = KIND_OF_ENTITY[result.entity_type]
    start, end = result.start, result.end
    score = float(result.score)
    if score < MIN_SCORE:
        window = lowered[max(0, start - CONTEXT_BEFORE) : start] + " " + lowered[end : end + CONTEXT_AFTER]
        words = [*recognizer.context, *KOREAN_CONTEXT.get(result.entity_type, ())]
        if kind == "PASSPORT":
            words += PASSPORT_CONTEXT
        if any(word.lower() in window for word in words):
            score = round(score + CONTEXT_BOOST, 6)  # 0.05 + 0.35 is 0.39999... in floats
    if score < MIN_SCORE:
        return None
    value = text[start:end]
    short = sum(ch.isdigit() for ch in value) < MIN_PHONE_DIGITS
    if kind == "PHONE" and (short or _KR_COMPANY_NUMBER.fullmatch(value)):
        return None
    if kind == "IP" and (not _personal_ip(value) or _GLUED_NUMBER.match(text, end) or text[start - 1 : start] in _GLUE):
        return None
    return Finding(start, end, kind, score)


_GLUED_NUMBER = re.compile(r"\.?\d")  # "1.2.3.4.5" is a version or a section number, not an address
_GLUE = frozenset(".:_") | frozenset("0123456789")


def _personal_ip(value: str) -> bool:
    """Loopback `::1`, the bare `::` and other digit-free forms say nothing about a person."""
    bare = value.split("/")[0]
    return bare not in ("::", "::1") and any(ch.isdigit() for ch in bare)


@lru_cache(maxsize=1)
def _recognizers() -> tuple[tuple[EntityRecognizer, re.Pattern[str] | None], ...]:
    """Each recognizer with the cue a text needs for it to run (None: the prefilter as a whole).

    Built on first use: importing Presidio imports spaCy (~2 s), which only texts that could hold
    PII should pay."""
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DePassportRecognizer,
        EsPassportRecognizer,
        IbanRecognizer,
        InPassportRecognizer,
        IpRecognizer,
        ItPassportRecognizer,
        KrPassportRecognizer,
        PhoneRecognizer,
        UkPassportRecognizer,
        UsPassportRecognizer,
        UsSsnRecognizer,
    )

    from promptloop.quality import pii_custom

    digits = _DIGIT_RUN
    passports = [cls() for cls in (UsPassportRecognizer, UkPassportRecognizer, DePassportRecognizer,
                                   ItPassportRecognizer, EsPassportRecognizer, InPassportRecognizer,
                                   KrPassportRecognizer)]
    return (
        (pii_custom.KrRrnRecognizer(), digits),
        (CreditCardRecognizer(), digits),
        (UsSsnRecognizer(), digits),
        (IbanRecognizer(), re.compile(r"[A-Za-z]{2}\d\d")),
        (PhoneRecognizer(supported_regions=REGIONS, leniency=1), digits),
        (pii_custom.KrPhoneRecognizer(), digits),
        (pii_custom.UsLocalPhoneRecognizer(), digits),
        (IpRecognizer(), _IP_CUE),
        (pii_custom.OfflineEmailRecognizer(), re.compile("@")),
        (pii_custom.UrlEncodedEmailRecognizer(), re.compile("%40")),
        *((recognizer, _PASSPORT_CUE) for recognizer in passports),
        (pii_custom.UsAddressRecognizer(), _US_ADDRESS_CUE),
        (pii_custom.KrRoadAddressRecognizer(), _KR_ADDRESS_CUE),
    )
