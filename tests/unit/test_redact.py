"""PII redaction: every kind found in English and Korean text, look-alikes left alone, series, hashing."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from promptloop.core.errors import InputError
from promptloop.quality.pii_custom import OFFLINE_TLD, rrn_birth_date_ok
from promptloop.quality.pii_recognizers import Finding, could_hold_pii, could_hold_pii_column, find_pii
from promptloop.quality.redact import (
    PLACEHOLDERS,
    Redactor,
    build_redactor,
    keyed_hash,
    luhn_valid,
)

REDACTOR = Redactor()

# (text, the raw PII in it, its kind)
POSITIVES = [
    ("My email is jordan.lee@example.com, thanks.", "jordan.lee@example.com", "EMAIL"),
    ("Reply to sam.rivera+billing@mail.example.org please", "sam.rivera+billing@mail.example.org", "EMAIL"),
    ("답변은 mina.park@example.com로 보내 주세요.", "mina.park@example.com", "EMAIL"),
    ("메일은hana.choi@example.com입니다", "hana.choi@example.com", "EMAIL"),
    ("You can call me at +1 415 555 0134.", "+1 415 555 0134", "PHONE"),
    ("London office: +44 20 7946 0958", "+44 20 7946 0958", "PHONE"),
    ("연락처는 +82 10-1234-5678 입니다", "+82 10-1234-5678", "PHONE"),
    ("서울 사무실 +82-2-123-4567로 연락 주세요", "+82-2-123-4567", "PHONE"),
    ("제 번호는 010-1234-5678입니다", "010-1234-5678", "PHONE"),
    ("번호는01012345678이에요", "01012345678", "PHONE"),
    ("예전 번호 011-123-4567도 있어요", "011-123-4567", "PHONE"),
    ("안녕하세요, 02-123-4567로 연락 주셔도 됩니다.", "02-123-4567", "PHONE"),
    ("경기 지점은 031-123-4567입니다", "031-123-4567", "PHONE"),
    ("Call (415) 555-0134 after 5pm", "(415) 555-0134", "PHONE"),
    ("Text 415-555-0134 or email me", "415-555-0134", "PHONE"),
    ("Phone: 415.555.0134", "415.555.0134", "PHONE"),
    ("Toll free 1-800-555-0199", "1-800-555-0199", "PHONE"),
    ("주민등록번호 900101-1234567로 인증했어요", "900101-1234567", "RRN"),
    ("제 주민등록번호는851224-2345678입니다.", "851224-2345678", "RRN"),
    ("주민번호 0207093123456 입력", "0207093123456", "RRN"),
    ("RRN 950630-2987654 for the record", "950630-2987654", "RRN"),
    ("Card 4111 1111 1111 1111 was charged twice", "4111 1111 1111 1111", "CARD"),
    ("카드번호4111-1111-1111-1111입니다", "4111-1111-1111-1111", "CARD"),
    ("Amex 378282246310005 expired", "378282246310005", "CARD"),
    ("Amex grouped 3782 822463 10005.", "3782 822463 10005", "CARD"),
    ("Mastercard 5555555555554444", "5555555555554444", "CARD"),
    ("My IP is 192.168.0.12.", "192.168.0.12", "IP"),
    ("서버 IP는10.0.0.255이에요", "10.0.0.255", "IP"),
    ("Blocked from 2001:0db8:85a3:0000:0000:8a2e:0370:7334 today", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "IP"),
    ("IPv6 주소 2001:db8::8a2e:370:7334에서 접속", "2001:db8::8a2e:370:7334", "IP"),
    ("link-local fe80::1ff:fe23:4567:890a here", "fe80::1ff:fe23:4567:890a", "IP"),
    ("mapped ::ffff:192.0.2.1 too", "::ffff:192.0.2.1", "IP"),
]

NEGATIVES = [
    "Refunds are possible within 14 days of being charged.",
    "The Plus plan costs $80 per year, or $8 per month.",
    "The Team plan launched in 2026.",
    "Please update to version 3.17.2 and restart.",
    "The release is scheduled for 2026-11-26 at 10:30.",
    "Sync ran at 14:30:00 and 15:45:10 today.",
    "It costs $1,299.00 including tax.",
    "You can store up to 5,000 notes and 20,000 attachments.",
    "Your verification code is 123456.",
    "Order #20261126 ships in 2 to 5 business days.",
    "Build 1.2.3 and 1.2.3-beta.4 are out.",
    "256.300.1.1 is not an address, and neither is 1.2.3.4.5.",
    "Version v1.2.3.4 fixed it.",
    "This card 4111 1111 1111 1112 fails the checksum.",
    "ISBN 978-3-16-148410-0 is a book.",
    "C++ std::vector and Ruby Foo::Bar are code, add::bead is not an address.",
    "Loopback ::1 and a bare :: are not personal.",
    "Reach us at support at example dot com.",
    "환불은 결제일로부터 14일 이내에 가능합니다.",
    "2026년 11월 26일에 출시됩니다.",
    "노트는 5,000개까지 저장됩니다. 가격은 월 8,000원입니다.",
    "버전 3.17.2로 업데이트하세요.",
    "123456-1234567은 월이 34라서 주민번호가 아닙니다.",
    "900101-9234567은 성별 자리가 9라서 아닙니다.",
    "고객센터 1588-1234로 문의하세요.",
    "영업일 기준 5~10일이 걸립니다.",
]


@pytest.mark.parametrize(("text", "raw", "kind"), POSITIVES)
def test_each_kind_is_replaced_by_its_placeholder_and_counted(text: str, raw: str, kind: str) -> None:
    out, counts = REDACTOR.redact_text(text)
    assert raw not in out
    assert out == text.replace(raw, PLACEHOLDERS[kind])
    assert counts == Counter({kind: 1})


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert REDACTOR.redact_text(text) == (text, Counter())


def test_korean_text_glued_to_pii_on_both_sides() -> None:
    text = "번호는010-1234-5678이고주민번호는900101-1234567이며메일은mina@example.com이고카드는4111111111111111입니다"
    out, counts = REDACTOR.redact_text(text)
    assert out == "번호는<PHONE>이고주민번호는<RRN>이며메일은<EMAIL>이고카드는<CARD>입니다"
    assert counts == Counter({"PHONE": 1, "RRN": 1, "EMAIL": 1, "CARD": 1})


def test_a_number_glued_to_latin_letters_is_not_pii() -> None:
    for text in ("ID A0101234567890", "token x4111111111111111y", "sku AB900101-1234567"):
        assert REDACTOR.redact_text(text) == (text, Counter())


def test_mixed_paragraph_keeps_no_raw_pii_and_counts_per_kind() -> None:
    raws = {
        "EMAIL": ["jordan.lee@example.com", "mina.park@example.com"],
        "PHONE": ["+1 415 555 0134", "010-9876-5432", "(415) 555-0187", "+44 20 7946 0321"],
        "RRN": ["770315-1456789"],
        "CARD": ["5555-5555-5555-4444", "378282246310005"],
        "IP": ["203.0.113.7", "2001:db8::1"],
    }
    paragraph = (
        f"Hi, I'm Jordan ({raws['EMAIL'][0]}). Call {raws['PHONE'][0]} or {raws['PHONE'][2]}; in Seoul "
        f"my number is {raws['PHONE'][1]}, in London {raws['PHONE'][3]}. 제 주민번호는{raws['RRN'][0]}이고 "
        f"메일은{raws['EMAIL'][1]}로 주세요. I paid with {raws['CARD'][0]} and then {raws['CARD'][1]} "
        f"from {raws['IP'][0]} and {raws['IP'][1]}. The refund (within 14 days, $80 per year, v3.17.2, "
        f"2026-11-26) never came."
    )
    out, counts = REDACTOR.redact_text(paragraph)
    for kind, values in raws.items():
        for raw in values:
            assert raw not in out, raw
        assert out.count(PLACEHOLDERS[kind]) == len(values) == counts[kind], kind
    assert "within 14 days, $80 per year, v3.17.2, 2026-11-26" in out


@pytest.mark.parametrize("digits", ["4111111111111111", "5555555555554444", "378282246310005", "79927398713", "0"])
def test_luhn_valid_numbers(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize("digits", ["4111111111111112", "1234567812345678", "79927398710", "", "4111-1111", "１２３"])
def test_luhn_invalid_numbers(digits: str) -> None:
    assert not luhn_valid(digits)


def test_card_numbers_are_replaced_only_when_luhn_passes() -> None:
    out, counts = REDACTOR.redact_text("valid 4111111111111111, invalid 4111111111111121, valid 4111 1111 1111 1111")
    assert out == "valid <CARD>, invalid 4111111111111121, valid <CARD>"
    assert counts == Counter({"CARD": 2})


def test_redact_text_passes_none_through() -> None:
    assert REDACTOR.redact_text(None) == (None, Counter())


def test_redact_series_keeps_nulls_non_strings_index_and_name() -> None:
    values = pd.Series(
        ["call 010-1234-5678", None, np.nan, 42, "mail a.b@example.com or 02-123-4567", "", "nothing here"],
        index=[70, 10, 30, 20, 60, 50, 40],
        name="input",
        dtype=object,
    )
    out, counts = REDACTOR.redact_series(values)
    assert out.index.equals(values.index) and out.name == "input"
    assert out[70] == "call <PHONE>"
    assert out[10] is None and isinstance(out[30], float) and np.isnan(out[30])
    assert out[20] == 42
    assert out[60] == "mail <EMAIL> or <PHONE>"
    assert out[50] == "" and out[40] == "nothing here"
    assert counts == Counter({"PHONE": 2, "EMAIL": 1})
    assert values[70] == "call 010-1234-5678"  # the input is not changed


def test_redact_series_keeps_a_str_dtype_and_its_missing_values() -> None:
    values = pd.Series(["주민번호 900101-1234567", None, "IP 10.1.2.3"], index=["a", "b", "c"], dtype="str")
    out, counts = REDACTOR.redact_series(values)
    assert out.dtype == values.dtype
    assert out.tolist()[0] == "주민번호 <RRN>" and out["c"] == "IP <IP>" and pd.isna(out["b"])
    assert counts == Counter({"RRN": 1, "IP": 1})


def test_redact_series_leaves_a_numeric_series_alone() -> None:
    values = pd.Series([1, 2, 3], index=[5, 6, 7])
    out, counts = REDACTOR.redact_series(values)
    assert out.equals(values) and counts == Counter()


def test_extra_patterns_get_their_own_placeholder_and_count() -> None:
    redactor = build_redactor({"ORDER_ID": r"ORD-\d{8}", "TICKET": r"(?i)tkt#\d+"})
    out, counts = redactor.redact_text("Order ORD-20261126 (tkt#991 / TKT#12), call 010-1234-5678")
    assert out == "Order <ORDER_ID> (<TICKET> / <TICKET>), call <PHONE>"
    assert counts == Counter({"ORDER_ID": 1, "TICKET": 2, "PHONE": 1})
    assert redactor.placeholders["ORDER_ID"] == "<ORDER_ID>"
    series, series_counts = redactor.redact_series(pd.Series(["ORD-12345678", None]))
    assert series.tolist()[0] == "<ORDER_ID>" and series_counts == Counter({"ORDER_ID": 1})


def test_extra_patterns_win_over_built_ins_where_both_match() -> None:
    redactor = build_redactor({"ACCOUNT": r"ACCT 4111111111111111"})
    assert redactor.redact_text("ACCT 4111111111111111") == ("<ACCOUNT>", Counter({"ACCOUNT": 1}))


@pytest.mark.parametrize(
    ("name", "regex", "message"),
    [
        ("ORDER_ID", r"ORD-(\d+", "invalid regex"),
        ("ORDER_ID", r"ORD-(\d+)", "non-capturing"),
        ("ORDER_ID", r"\d*", "empty string"),
        ("ORDER_ID", "", "non-empty"),
        ("order_id", r"ORD-\d+", "upper case"),
        ("1ORDER", r"ORD-\d+", "upper case"),
        ("EMAIL", r"ORD-\d+", "built-in"),
    ],
)
def test_a_bad_extra_pattern_is_an_input_error_naming_the_field(name: str, regex: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        build_redactor({"GOOD": r"G-\d+", name: regex})
    assert info.value.source == "params.yaml"
    assert info.value.field == f"collect.extra_pii_patterns.{name}"
    assert message in str(info.value)


def test_keyed_hash_is_deterministic_per_key_and_keeps_nulls() -> None:
    values = pd.Series(["alice", None, "bob", "alice", np.nan], index=[9, 8, 7, 6, 5], name="user_id", dtype=object)
    first = keyed_hash(values, b"key-1")
    assert first.equals(keyed_hash(values, b"key-1"))
    assert first.index.equals(values.index) and first.name == "user_id"
    assert first[9] == first[6] != first[7]
    assert first[9] == hmac.new(b"key-1", b"alice", hashlib.sha256).hexdigest()[:32]
    assert first[8] is None and np.isnan(first[5])
    other = keyed_hash(values, b"key-2")
    assert other[9] != first[9] and other[7] != first[7]
    for digest in first.dropna():
        assert len(digest) == 32 and int(digest, 16) >= 0
        assert "alice" not in digest and "bob" not in digest


def test_keyed_hash_keeps_a_str_dtype() -> None:
    values = pd.Series(["u-1", None], dtype="str")
    hashed = keyed_hash(values, b"k")
    assert hashed.dtype == values.dtype and pd.isna(hashed[1]) and hashed[0] != "u-1"


def test_keyed_hash_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError):
        keyed_hash(pd.Series(["a"]), b"")


def test_four_hundred_rows_in_two_columns_run() -> None:
    rng = random.Random(3)
    pii = [raw for _, raw, _ in POSITIVES]
    filler = NEGATIVES + ["How do I export my notes to PDF?", "노트를 PDF로 내보내려면 어떻게 하나요?"]

    def row_text() -> str:
        text = " ".join(rng.sample(filler, 3))
        return f"{text} {rng.choice(pii)} 감사합니다." if rng.random() < 0.08 else text

    frame = pd.DataFrame({"input": [row_text() for _ in range(400)], "output": [row_text() for _ in range(400)]})
    total: Counter[str] = Counter()
    for column in ("input", "output"):
        frame[column], counts = REDACTOR.redact_series(frame[column])
        total += counts
    assert 40 < sum(total.values()) < 110  # ~8% of 800 texts hold one PII value
    assert not frame["input"].str.contains("010-1234-5678|900101-1234567|4111 1111 1111 1111", regex=True).any()


# The prefilter and each recognizer's cue must lose nothing: gated and ungated runs agree.
_FRAGMENTS = st.sampled_from(
    ["0", "1", "2", "5", "9", "010", "02", "031", "415", "555", "1234", "5678", "0134", "900101", "1234567",
     "4111", "1111", "378282246310005", "192", "168", "255", "256", ".", "-", " ", "  ", "(", ")", "+", "+82 ",
     "+44 ", "+49 ", "DE89", "GB29 NWBK", "3704", "v", "a", "x", "_", "번호", "는", "\n", ",", "/", "#", ":", "::",
     "fe80", "@", "mina@example.com", "call ", "ssn ", "passport ", "여권 ", "Main St", " Ave", "세종대로 ", "길 ",
     "\u3000", "\xa0", "\x1c", "\t", "١٢٣", "０１０"]
)
_TEXTS = st.one_of(
    st.lists(_FRAGMENTS, max_size=30).map("".join), st.text(alphabet="0123456789 .-()+:@ax번로길St", max_size=40)
)


def covered(findings: list[Finding]) -> set[int]:
    return {i for f in findings for i in range(f.start, f.end)}


# derandomize: CI runs the same 300 texts every time (a random draw found "0415١٢٣#010" once).
@settings(max_examples=300, deadline=None, derandomize=True)
@given(_TEXTS)
@example("0415١٢٣#010")  # found by this test: the digit window cut the extension's last digit off
def test_the_prefilter_and_cues_lose_nothing_a_recognizer_finds(text: str) -> None:
    ungated = find_pii(text, gated=False)
    # Nothing the recognizers find over the whole text escapes the gated run. On run-together values
    # ("NWBK378282246310005번호1234567") a window can see a value the whole text's overlapping
    # candidates hid: redacting more there is the safe side.
    assert covered(ungated) <= covered(find_pii(text))
    if ungated:
        assert could_hold_pii(text)
    # the column form (RE2 over Arrow strings) flags at least every text the per-text form does
    column = could_hold_pii_column(np.array([text, None, 7], dtype=object)).tolist()
    assert column[1:] == [False, False]
    assert column[0] or not could_hold_pii(text)


def test_a_redactor_survives_pickling_for_worker_processes() -> None:
    redactor = build_redactor({"ORDER_ID": r"ORD-\d{8}"})
    copy = pickle.loads(pickle.dumps(redactor))
    assert copy == redactor
    assert copy.redact_text("ORD-12345678 at 010-1234-5678")[0] == "<ORDER_ID> at <PHONE>"


# --- the planted corpus: US, EU and Korean formats in English, Korean, German and French sentences ----
PLANTED_FILE = Path(__file__).parents[1] / "data" / "pii_planted.jsonl"
PLANTED = [json.loads(line) for line in PLANTED_FILE.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("row", PLANTED, ids=[f"{r['region']}-{r['kind']}-{r['value']}" for r in PLANTED])
def test_no_planted_value_survives_and_its_kind_is_counted(row: dict[str, str]) -> None:
    out, counts = REDACTOR.redact_text(row["text"])
    assert row["value"] not in out
    assert counts[row["kind"]] >= 1
    assert PLACEHOLDERS[row["kind"]] in out


def test_the_planted_corpus_covers_every_kind_in_us_eu_and_korean_formats() -> None:
    kinds = {(r["region"] if r["region"] in ("US", "KR") else "EU", r["kind"]) for r in PLANTED}
    assert {("US", k) for k in ("SSN", "PHONE", "ADDRESS", "PASSPORT")} <= kinds
    assert {("EU", k) for k in ("IBAN", "PHONE", "EMAIL", "IP", "CARD")} <= kinds
    assert {("KR", k) for k in ("RRN", "PHONE", "ADDRESS")} <= kinds
    assert set(PLACEHOLDERS) == {r["kind"] for r in PLANTED}


def test_a_redacted_series_of_the_planted_corpus_holds_no_value() -> None:
    texts = pd.Series([r["text"] for r in PLANTED] * 2, dtype="string")  # repeats replay the first result
    out, counts = REDACTOR.redact_series(texts)
    stored = "\n".join(out.astype(str))
    assert not [r["value"] for r in PLANTED if r["value"] in stored]
    assert sum(counts.values()) >= 2 * len(PLANTED)


@pytest.mark.parametrize(
    "text",
    [
        "Order 4827193 ships Monday.",  # 7 digits, no separator
        "Upgrade from 2.14.3 to 2.15.0 today.",
        "The meeting is on 2026-12-02 at 09:30:15 UTC.",
        "Total: $12,499.99 for 3 seats.",
        "Timestamp 1764662400 in the log.",
        "Error code 0x80070005 on build 19045.",
        "We have 3 apples on the way to the office.",
        "10개로 3일이면 됩니다.",
        "주문번호 20261126-0042 확인했습니다.",
    ],
)
def test_order_numbers_versions_dates_prices_and_timestamps_survive(text: str) -> None:
    assert REDACTOR.redact_text(text) == (text, Counter())


@pytest.mark.parametrize(("digits", "ok"), [("9001011", True), ("0002293", True), ("0102293", False),
                                            ("9002301", False), ("9013011", False), ("9001019", False)])
def test_the_rrn_birth_date_must_exist_in_its_century(digits: str, ok: bool) -> None:
    # 2000-02-29 exists (gender digit 3: born 2000s); 2001-02-29 and 1900-02-30 do not; 9 is no gender digit
    assert rrn_birth_date_ok(digits[:6] + digits[6]) is ok


@pytest.mark.parametrize("text", ["chat/ann@example.com", "ticket#ann@example.com", "a/b.c@corp.example.org"])
def test_an_address_after_a_slash_or_hash_is_redacted(text: str) -> None:
    # Presidio's address pattern takes '/' and '#' into the local part; read as a URL, that match has
    # the host before the '/', no public suffix: only the part after the '@' is the domain.
    redacted, counts = REDACTOR.redact_text(f"write to {text} today")
    assert "@" not in str(redacted) and counts["EMAIL"] == 1


URL_ENCODED = ["GET /reset?email=ann.lee%40example.com&next=/", "/u?e=ann.lee%2Bshop%40mail.example.org",
               "redirect=https%3A%2F%2Fx.io%2F%3Fu%3Dbob%40example.co.uk"]


@pytest.mark.parametrize("text", URL_ENCODED)
def test_an_address_written_into_a_url_is_redacted(text: str) -> None:
    # Web logs hold request URLs, where the '@' of an address is %40: one text at a time and a column.
    redacted, counts = REDACTOR.redact_text(text)
    assert "%40" not in str(redacted) and counts["EMAIL"] == 1
    column, _ = REDACTOR.redact_series(pd.Series([text, "no address here"], dtype=object))
    assert "%40" not in column[0] and column[1] == "no address here"


@pytest.mark.parametrize("text", ["50%40 off today", "john%40localhost", "a%40b.c", "100%40"])
def test_a_percent_forty_without_a_real_domain_is_left_alone(text: str) -> None:
    assert REDACTOR.redact_text(text) == (text, Counter())


def test_email_validation_reads_only_the_bundled_suffix_list() -> None:
    assert OFFLINE_TLD.suffix_list_urls == ()
    assert OFFLINE_TLD.fallback_to_snapshot
    assert OFFLINE_TLD._cache.enabled is False  # no cache file under ~ either


_NO_NETWORK = """
import socket, sys
def refuse(*args, **kwargs):
    raise SystemExit("network touched: " + repr(args[:2]))
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from promptloop.quality.redact import Redactor
out, counts = Redactor().redact_text(sys.argv[1])
print(out)
"""


def test_a_first_redaction_in_a_fresh_process_touches_no_network() -> None:
    text = "Mail jordan.lee@example.com or anna@beispiel.de, call +49 30 901820, SSN 536-22-8471"
    run = subprocess.run([sys.executable, "-c", _NO_NETWORK, text], capture_output=True, text=True, timeout=120,
                         env=None, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "Mail <EMAIL> or <EMAIL>, call <PHONE>, SSN <SSN>"


def test_a_megabyte_of_digit_groups_loses_every_long_digit_run_without_the_recognizers() -> None:
    text = "call 010-1234-5678 " + "12345678 " * 5_000  # 45,000 chars of digit runs: over the window budget
    out, counts = REDACTOR.redact_text(text)
    assert "1234567" not in out and "010-1234" not in out
    assert set(counts) == {"NUMBER"}


def test_a_long_text_is_read_in_overlapping_pieces_and_loses_nothing() -> None:
    filler = "How do I export my notes? " * 400  # ~10,000 chars: three whole-text pieces
    values = ["mina.park@example.com", "536-22-8471", "1234 Elm Street", "010-9876-5432"]
    text = filler + filler.join(f" {value}. " for value in values) + filler
    out, counts = REDACTOR.redact_text(text)
    assert not [v for v in values if v in out]
    assert counts == Counter({"EMAIL": 1, "SSN": 1, "ADDRESS": 1, "PHONE": 1})
