"""Small text helpers shared by retrieval and scoring: terms, language, sentences."""

from __future__ import annotations

import re
from typing import Literal

_WORD = re.compile(r"[0-9a-z]+|[\uac00-\ud7a3]+|[\u3040-\u30ff\u4e00-\u9fff]+", re.IGNORECASE)
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_KANA = re.compile(r"[\u3040-\u30ff]")  # hiragana and katakana: only Japanese writes them
_KANJI = re.compile(r"[\u4e00-\u9fff]")
_CJK = re.compile(r"[\uac00-\ud7a3\u3040-\u30ff\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
# A reasoning model's thinking, sent before its answer in the content by some servers (Ollama, vLLM without a
# reasoning parser, DeepSeek-R1 and Qwen3 templates). litellm moves a block that starts an OpenAI-compatible reply
# into `reasoning_content`; this catches what it leaves (leading whitespace, <reasoning>, custom providers).
# Only a leading, closed block, so a text about tags stays.
_REASONING = re.compile(r"\A\s*<(think|thinking|reasoning)>.*?</\1>\s*", re.DOTALL | re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+|(?<=다\.)\s*|\n+")

# Words too common to say anything about a topic (English); Korean particles are handled by
# the bigram split below, which keeps stems matchable across 조사 (을/를/은/는 ...).
Language = Literal["en", "ko", "ja"]

STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being
    do does did doing have has had i you he she it we they me my your our their this that these
    those what which who whom how when where why can could should would will shall may might must
    not no yes so than then there here about into over under again any all each few more most some
    such only own same too very just also get got please thanks thank hi hello""".split()
)


def terms(text: str) -> list[str]:
    """Lower-cased content terms: English words minus stopwords, Korean and Japanese runs as char bigrams
    (Japanese has no spaces between words, and bigrams keep Korean stems matchable across particles)."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        if _CJK.match(word):
            out.extend(word[i : i + 2] for i in range(max(1, len(word) - 1)))
        elif word not in STOPWORDS and (len(word) > 1 or word.isdigit()):
            out.append(word)
    return out


def hangul_share(text: str) -> float:
    """Share of letters that are Hangul (0 for text without letters)."""
    hangul = len(_HANGUL.findall(text))
    letters = hangul + len(_LATIN.findall(text))
    return hangul / letters if letters else 0.0


def language(text: str) -> Language:
    """'ko' when a good share of the letters are Hangul, 'ja' when they are kana and kanji (with some kana:
    kanji alone could be Chinese), else 'en'."""
    if hangul_share(text) >= 0.3:
        return "ko"
    kana = len(_KANA.findall(text))
    japanese = kana + len(_KANJI.findall(text))
    letters = japanese + len(_HANGUL.findall(text)) + len(_LATIN.findall(text))
    return "ja" if kana and letters and japanese / letters >= 0.3 else "en"


def sentences(text: str) -> list[str]:
    """Split prose into sentences (English and Korean endings)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s and s.strip()]


def estimate_tokens(text: str) -> int:
    """Rough BPE token count: ~4 ASCII chars per token, ~1 token per non-ASCII char (Hangul)."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return (ascii_chars + 3) // 4 + (len(text) - ascii_chars)


def without_reasoning(text: str) -> str:
    """A model's reply without the `<think>...</think>` block a reasoning model may put before its answer:
    what the user is shown, and where a judge's JSON verdict is (its drafts inside the block are not)."""
    return _REASONING.sub("", text, count=1)
