"""promptloop's own Presidio recognizers: Korean RRN and phones, US local phones, addresses, offline email.

Imported only by `pii_recognizers._recognizers` (importing Presidio imports spaCy).
"""

from __future__ import annotations

import calendar
import re
from typing import Any

import tldextract
import usaddress
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import EmailRecognizer

_US_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Way|Court|Ct|Place|Pl|Terrace|Ter"
    r"|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Square|Sq|Trail|Trl|Plaza|Loop|Alley"
)
_KR_ROAD = r"[가-힣]{2,}[가-힣0-9]*(?:로|길)"


def rrn_birth_date_ok(digits: str) -> bool:
    """The RRN's YYMMDD is a real date in the century its 7th digit (1-8) names."""
    century = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}.get(digits[6])
    if century is None:
        return False
    year, month, day = century + int(digits[:2]), int(digits[2:4]), int(digits[4:6])
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


# tldextract fetches the public-suffix list from the internet by default (and caches it under ~):
# no URL and no cache dir leaves it its bundled snapshot only.
OFFLINE_TLD = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

_SEP = r"[ .\-]"
# ASCII lookarounds: a number may touch Hangul ("번호는010-1234-5678입니다"), not a Latin letter/digit.
_LEFT = r"(?<![A-Za-z0-9_])"
# YYMMDD with a plausible month and day, then 7 digits starting with the 1-8 gender/century digit
_RRN = rf"{_LEFT}\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])[- ]?[1-8]\d{{6}}(?!\d)"
# mobile 010/011/016-019, Seoul 02, regional 031-064, 050/070/080
_KR_PHONE = rf"{_LEFT}(?:01[016789]|0(?:2|[3-6][1-5]|[578]0)){_SEP}?\d{{3,4}}{_SEP}?\d{{4}}(?!\d)"


class KrRrnRecognizer(PatternRecognizer):
    """Korean resident registration number: YYMMDD, then 7 digits starting with the 1-8 gender digit."""

    reads_hangul = True  # its lookarounds are ASCII, so it reads the text as it is

    def __init__(self) -> None:
        super().__init__(
            supported_entity="KR_RRN",
            patterns=[Pattern("RRN", _RRN, 0.5)],
            context=["주민등록번호", "주민번호", "resident registration"],
            global_regex_flags=re.ASCII,
        )

    def validate_result(self, pattern_text: str) -> bool:
        """The birth date must exist (no 30 February) in the century the gender digit names."""
        return rrn_birth_date_ok(re.sub(r"[- ]", "", pattern_text))


class KrPhoneRecognizer(PatternRecognizer):
    """Korean mobile (010, 011 ...) and landline (02, 031 ...) numbers, as the pre-Presidio regex."""

    reads_hangul = True

    def __init__(self) -> None:
        super().__init__(
            supported_entity="KR_PHONE",
            patterns=[Pattern("KR phone", _KR_PHONE, 0.5)],
            context=["전화", "연락처", "phone"],
            global_regex_flags=re.ASCII,
        )


class UsLocalPhoneRecognizer(PatternRecognizer):
    """A 7-digit US local number, which `phonenumbers` will not take without an area code.

    `555-0134` (exchange 2-9, a hyphen) is distinctive enough alone; `555 0134` and `555.0134` look
    like any two numbers, so they count only after a context word (call, phone, text me ...)."""

    def __init__(self) -> None:
        edge = r"(?<![\w\-.+(])(?<!\d[\s\-.])"  # not the tail of a longer number ("415-555-0134")
        tail = r"(?![\w\-]|\.\d|\s\d)"
        super().__init__(
            supported_entity="US_LOCAL_PHONE",
            patterns=[
                Pattern("local, hyphen", rf"{edge}[2-9]\d\d-\d{{4}}{tail}", 0.4),
                Pattern("local, space or dot", rf"{edge}[2-9]\d\d[ .]\d{{4}}{tail}", 0.1),
            ],
            context=["call", "phone", "tel", "text me", "reach", "cell", "mobile", "number", "dial", "전화", "연락"],
        )


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, its domain checked against tldextract's bundled suffix list."""

    def validate_result(self, pattern_text: str) -> bool:
        """A known public suffix after the '@' (what Presidio checks, without the network).

        Only the domain is checked: the match's local part may hold '/' or '#' (`chat/ann@example.com`),
        and read as a URL the whole match would have the host `chat`, no suffix, and the address kept.
        """
        return public_domain(pattern_text.rpartition("@")[2])


class UrlEncodedEmailRecognizer(PatternRecognizer):
    """An address written into a URL (`/reset?email=ann%40example.com`): its '@' is `%40` (and its '+'
    may be `%2B`), which Presidio's pattern does not take. Kept when the part after `%40` ends in a
    public suffix."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="EMAIL_ADDRESS",
            patterns=[Pattern("url-encoded email", r"(?<![\w.+\-%])[\w.+\-%]+%40[\w\-]+(?:\.[\w\-]+)+", 0.5)],
        )

    def validate_result(self, pattern_text: str) -> bool:
        """A known public suffix after the `%40`."""
        return public_domain(pattern_text.rpartition("%40")[2])


def public_domain(domain: str) -> bool:
    """`domain` ends in a known public suffix (tldextract's bundled list; no network)."""
    return OFFLINE_TLD(domain).fqdn != ""


# House number, 1-5 words, a street suffix; then optionally a unit, a city, a state and a ZIP.
_US_CANDIDATE = re.compile(
    rf"\b[0-9]{{1,6}}[A-Za-z]?(?:\s+[A-Z0-9][\w.'\-]*){{1,5}}?\s+(?:{_US_SUFFIX})\b(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"(?:,?\s+(?:Apt|Suite|Ste|Unit|Fl|Floor|#)\.?\s*#?[\w\-]+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2})?"
    r"(?:,?\s*[A-Z]{2})?"
    r"(?:\s+\d{5}(?:-\d{4})?)?"
)
_STREET_PARTS = {"StreetName", "StreetNamePostType"}


class UsAddressRecognizer(EntityRecognizer):
    """US street addresses: candidate spans from a regex, kept when `usaddress` parses them as one.

    `usaddress` is a conditional-random-field parser whose trained model ships in its wheel."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["US_ADDRESS"], context=["address", "live", "ship to", "주소"])

    def load(self) -> None:
        """Nothing to load: the model is read by `usaddress` on import."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """A result (score 0.85) per candidate span that `usaddress` reads as a street address."""
        results = []
        for match in _US_CANDIDATE.finditer(text):
            if _is_street_address(match.group()):
                results.append(RecognizerResult("US_ADDRESS", match.start(), match.end(), 0.85))
        return results


def _is_street_address(candidate: str) -> bool:
    """`usaddress` labels the candidate with a house number first and a street name."""
    labels = [label for _, label in usaddress.parse(candidate)]
    return bool(labels) and labels[0] == "AddressNumber" and bool(_STREET_PARTS & set(labels))


class KrRoadAddressRecognizer(PatternRecognizer):
    """Korean road-name addresses: [시/도] [구/군] a road ending in 로/길, its building number."""

    reads_hangul = True

    def __init__(self) -> None:
        counters = r"개|일|원|명|분|시간|년|월|주|배|번째|회|건|장|%|km|m\b"  # "10개로 3일": a particle, not a road
        super().__init__(
            supported_entity="KR_ADDRESS",
            patterns=[Pattern(
                "KR road address",
                rf"(?:[가-힣]+(?:시|도)\s)?(?:[가-힣]+(?:구|군)\s)?{_KR_ROAD}\s?\d{{1,4}}(?:-\d{{1,4}})?(?!\d)(?!\s?(?:{counters}))",
                0.5,
            )],
            context=["주소", "address"],
            global_regex_flags=0,
        )
