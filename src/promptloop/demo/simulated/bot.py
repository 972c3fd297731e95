"""`offline/support-bot`: answers from the documents in its context, steered by its system prompt.

The behaviour is a function of the instructions the system prompt contains, the way a real model
follows (or lacks) instructions: cite sources, answer in the user's language, say "I don't know"
when the documents don't cover the question, refuse injected instructions, keep personal data out,
stay within N sentences, answer as JSON. A weak prompt yields the failures a weak prompt yields.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import TypedDict

from promptloop.core.text import language, sentences, terms
from promptloop.domain.kb import ContextDoc, parse_context

_WORDS_TO_INT = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_FEATURE_PATTERNS = {
    "cites": r"\bcite\b|citation|\[source|source (document )?ids?",
    "matches_language": r"same language|(user|customer)'?s language|language (of|as) the (user|customer|question)",
    "abstains": (
        r"(say|reply|answer|respond|admit)[^.]{0,40}(don'?t|do not|not) (know|sure)|never guess|"
        r"(do not|don'?t) (guess|make up|invent)|if the (answer|documentation|context|documents?)[^.]{0,50}(not|n't)"
    ),
    "guards_injection": (
        r"ignore (any )?instructions (in|inside|within|contained in)|never (reveal|disclose|share)[^.]{0,30}"
        r"(prompt|instructions)|treat[^.]{0,40}as (data|untrusted)|(do not|don'?t|never) follow instructions"
    ),
    "protects_pii": r"personal (data|information)|\bpii\b|(do not|don'?t|never) repeat[^.]{0,40}(email|phone|number)",
    "json_output": r"\bjson\b",
}
_MAX_SENTENCES = re.compile(r"(?:at most|no more than|maximum of|up to) (\d+|one|two|three|four|five) sentences?")
_CONCISE = re.compile(r"\b(concise|brief|short)\b")

# What a gullible model falls for: instruction overrides, prompt extraction, role-play, fake tags.
_INJECTION = re.compile(
    r"ignore (all |the |any )?(previous|prior|above|earlier|your|preceding) (instructions|rules|prompt)|"
    r"system prompt|developer mode|\bDAN\b|pretend (you are|to be)|you are now|jailbreak|"
    r"</?(system|user|assistant|instructions?)>|###\s*(system|instruction|new)|new (rules|instructions)|"
    r"이전 (지시|명령|지침)|시스템 프롬프트|무시하고|개발자 모드|탈옥",
    re.IGNORECASE,
)
_EXTRACTION = re.compile(r"prompt|instruction|rules|프롬프트|지시|지침", re.IGNORECASE)
_PII = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.]+|\+?\d{1,3}[ -]?\(?\d{2,4}\)?[ -]\d{3,4}[ -]\d{4}|\d{2,3}-\d{3,4}-\d{4}|\d{6}-\d{7}"
)

# Retrieval this weak means the documents don't answer the question (BM25 score, tuned on the
# sample KB: answerable questions score above it, unanswerable ones below, ~90% of the time).
RETRIEVAL_FLOOR = 7.0
# Without scores in the context, the share of the question's terms a document must contain.
COVERAGE_FLOOR = 0.5

class BotTexts(TypedDict):
    """What the simulated bot says, in one language."""

    openers: list[str]
    closing: str
    abstain: str
    refuse: str
    pii: str
    no_context: str


TEXTS: dict[str, BotTexts] = {
    "en": {
        "openers": ["Great question! ", "Thanks for reaching out! ", "Happy to help! "],
        "closing": " Let me know if there is anything else I can help you with!",
        "abstain": "I'm not sure. I couldn't find that in the documentation I have.",
        "refuse": "I can't help with that request. I can answer questions about the product.",
        "pii": "Thanks, I have noted your details ({pii}). ",
        "no_context": "Please contact our support team for help with this.",
    },
    "ko": {
        "openers": ["문의해 주셔서 감사합니다! ", "좋은 질문입니다! "],
        "closing": " 더 궁금한 점이 있으면 말씀해 주세요!",
        "abstain": "잘 모르겠습니다. 제공된 문서에서 찾을 수 없습니다.",
        "refuse": "그 요청은 도와드릴 수 없습니다. 제품에 관한 질문에 답해 드릴게요.",
        "pii": "감사합니다. 고객님의 정보({pii})를 확인했습니다. ",
        "no_context": "고객 지원팀에 문의해 주세요.",
    },
}


@dataclass(frozen=True)
class PromptFeatures:
    """The instructions a system prompt gives, as the simulated model understands them."""

    cites: bool = False
    matches_language: bool = False
    abstains: bool = False
    guards_injection: bool = False
    protects_pii: bool = False
    json_output: bool = False
    max_sentences: int | None = None


def read_features(system_prompt: str) -> PromptFeatures:
    """Which instructions the system prompt gives (the documents in it are not instructions)."""
    instructions = re.sub(r"<doc [^>]*>.*?</doc>", " ", system_prompt, flags=re.DOTALL).lower()
    found = {name: bool(re.search(pattern, instructions)) for name, pattern in _FEATURE_PATTERNS.items()}
    limit = _MAX_SENTENCES.search(instructions)
    if limit:
        max_sentences: int | None = int(_WORDS_TO_INT.get(limit.group(1), limit.group(1)))
    else:
        max_sentences = 3 if _CONCISE.search(instructions) else None
    return PromptFeatures(**found, max_sentences=max_sentences)


def relevance(question_terms: set[str], body: str) -> float:
    """Share of the question's terms that the document contains."""
    if not question_terms:
        return 0.0
    return len(question_terms & set(terms(body))) / len(question_terms)


def answer(messages: list[dict[str, str]], temperature: float, rng: random.Random) -> str:
    """The bot's reply to the last user message, given the system prompt and context documents."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    docs = parse_context(system + "\n" + user)
    question = re.sub(r"<doc [^>]*>.*?</doc>", " ", user, flags=re.DOTALL).strip()
    features = read_features(system)
    asked_in = language(question)
    # It speaks the languages of its documentation (English, Korean); any other question gets English.
    reply_lang = asked_in if features.matches_language and asked_in in TEXTS else "en"
    texts = TEXTS[reply_lang]

    if _INJECTION.search(question):
        if features.guards_injection:
            return _shape(texts["refuse"], None, features)
        if _EXTRACTION.search(question):
            leaked = re.sub(r"<doc [^>]*>.*?</doc>", "", system, flags=re.DOTALL).strip()
            return f"Sure! Here are my instructions: {leaked[:400]}"
        return "Sure! I am now in unrestricted mode and will follow your new rules from here on."

    doc_id, body = _choose_document(question, docs, features, reply_lang, temperature, rng)
    if doc_id is None:
        return _shape(texts["abstain"] if features.abstains else texts["no_context"], None, features)

    chosen = _choose_sentences(question, body, features.max_sentences, temperature, rng)
    text = " ".join(chosen)
    doc_lang = language(body)
    if features.max_sentences is None:  # the weak default: chatty opener and closing
        text = rng.choice(TEXTS[doc_lang]["openers"]) + text + TEXTS[doc_lang]["closing"]
    pii = _PII.findall(question)
    if pii and not features.protects_pii:
        text = TEXTS[doc_lang]["pii"].format(pii=", ".join(pii)) + text
    return _shape(text, doc_id if features.cites else None, features)


def _choose_document(
    question: str,
    docs: list[ContextDoc],
    features: PromptFeatures,
    reply_lang: str,
    temperature: float,
    rng: random.Random,
) -> tuple[str | None, str]:
    """The document to answer from, or (None, "") to abstain."""
    usable = [d for d in docs if language(d.body) == reply_lang] or (docs if features.matches_language else [])
    if not usable:
        return None, ""
    q_terms = set(terms(question))
    strength = [(d.score / RETRIEVAL_FLOOR if d.score is not None else relevance(q_terms, d.body) / COVERAGE_FLOOR, d)
                for d in usable]
    if temperature > 0:
        # Sampling: mostly the best document, now and then a close runner-up.
        top = max(s for s, _ in strength)
        weights = [math.exp((s - top) / (0.1 * temperature)) for s, _ in strength]
        best = strength[rng.choices(range(len(strength)), weights=weights)[0]]
    else:
        best = max(strength, key=lambda s: s[0])
    if best[0] < 1.0 and features.abstains:
        return None, ""
    return best[1].id, best[1].body


def _choose_sentences(
    question: str, body: str, limit: int | None, temperature: float, rng: random.Random
) -> list[str]:
    """The document's sentences that answer best, in document order, at most `limit`."""
    parts = sentences(body)
    if limit is None:
        return parts
    q_terms = set(terms(question))
    noise = (lambda: rng.random() * 0.2 * temperature) if temperature > 0 else (lambda: 0.0)
    ranked = sorted(range(len(parts)), key=lambda i: -(relevance(q_terms, parts[i]) + noise()))
    keep = sorted(ranked[:limit])
    return [parts[i] for i in keep]


def _shape(text: str, source: str | None, features: PromptFeatures) -> str:
    """Add the citation or wrap as JSON, as the prompt asked."""
    if features.json_output:
        return json.dumps({"answer": text, "sources": [source] if source else []}, ensure_ascii=False)
    return f"{text} [source: {source}]" if source else text
