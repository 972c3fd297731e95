"""The offline judge's answer to a cluster-label request: a topic from the conversations' commonest words.

A stand-in for a real LLM naming a failure cluster's topic (analyze/topics.py): it reads the
`<conversation>` blocks of the request and names the topic by their three most frequent topic words
(in how many conversations they appear, then alphabetically), leaving out the words of the app's
description (the topic is not the app's name), as JSON {"topic": ...}.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from promptloop.analyze.topics import LABEL_SYSTEM, topic_words

_CONVERSATION = re.compile(r"<conversation>\n?(.*?)\n?</conversation>", re.DOTALL)
_APP = re.compile(r"^The app: (.*)$", re.MULTILINE)
TOPIC_WORDS = 3


def is_label_request(messages: list[dict[str, str]]) -> bool:
    """Whether the messages ask for a cluster's topic (the labeller's system message)."""
    return any(m["role"] == "system" and m["content"] == LABEL_SYSTEM for m in messages)


def topic_reply(messages: list[dict[str, str]]) -> str:
    """{"topic": the commonest topic words of the conversations} ("general questions" when there are none)."""
    request = next((m["content"] for m in messages if m["role"] == "user" and "<conversation>" in m["content"]), "")
    app = _APP.search(request)
    about_the_app = set(topic_words(app.group(1))) if app else set()
    seen: Counter[str] = Counter()
    for conversation in _CONVERSATION.findall(request):
        seen.update(set(topic_words(conversation)) - about_the_app)
    words = [w for w, _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:TOPIC_WORDS]]
    return json.dumps({"topic": " ".join(words) or "general questions"}, ensure_ascii=False)
