"""`offline/triage-bot`: sorts a support ticket into a category and a priority, then drafts the reply.

The second sample app (`apps/triage_bot.py`) calls it twice per ticket: first to classify (the
conversation ends with the ticket), then, with its classification as an assistant turn, to write
the final answer, a JSON object `{"category", "priority", "reply"}`.

Its behaviour is a function of the instructions in the system prompt, the way a real model follows
(or lacks) them. Without instructions it makes the mistakes a weak prompt makes:

- a ticket about money that mentions an error goes to `bug` (told "charges, refunds ... are billing": billing);
- an outage gets the priority of any bug, `normal` (told "outages are priority high": high);
- the reply is in English whatever the ticket's language (told to answer in the ticket's language: it does);
- JSON keys it thinks go without saying are left out: a `low` priority is omitted (told "JSON only with the keys
  category, priority and reply": all three, always).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from promptloop.core.text import language

CATEGORIES = ("billing", "bug", "account", "how_to")
PRIORITIES = ("low", "normal", "high")

_FEATURE_PATTERNS = {
    "matches_language": (
        r"same language|(ticket|customer|user)'?s (own )?language|language (of|as) the (ticket|customer|user)|"
        r"in the language (of|the)"
    ),
    "outages_high": r"outages?\b[^.\n]{0,80}\bhigh\b|\bhigh\b[^.\n]{0,80}\boutages?\b",
    "money_is_billing": (
        r"(charges?|payments?|refunds?|invoices?)\b[^.\n]{0,80}\b(are|is|go to|count as|to)\s+(the\s+)?billing"
    ),
    "json_keys": r"json\b[^.\n]{0,80}\bkeys?\b[^.\n]{0,40}category[^.\n]{0,20}priority[^.\n]{0,20}reply",
}

# What a ticket is about, by the words it uses (English and Japanese).
_MONEY = re.compile(r"charg|refund|invoice|payment|billing|card|subscription|price|receipt|請求|返金|支払|料金|カード|"
                    r"領収書|課金|引き落とし|月払い|年払い", re.IGNORECASE)
_BROKEN = re.compile(r"error|crash|bug|broken|not working|doesn'?t work|does not work|fails?\b|failed|freez|"
                     r"blank|\blose\b|エラー|クラッシュ|不具合|動かない|落ちる|失敗|表示されない|"
                     r"フリーズ|消え", re.IGNORECASE)
_OUTAGE = re.compile(r"outage|(is|are|went|been|be) down|nobody|no one|everyone|whole team|all (of )?(our|my) users|"
                     r"entire (team|company)|can'?t access anything|障害|ダウンし|全員|誰も|全社", re.IGNORECASE)
_ACCESS = re.compile(r"password|log ?in|sign ?in|two-factor|2fa|locked out|account|email address|"
                     r"パスワード|ログイン|アカウント|二段階|メールアドレス", re.IGNORECASE)


@dataclass(frozen=True)
class TriageFeatures:
    """The instructions a system prompt gives, as the simulated triage model understands them."""

    matches_language: bool = False
    outages_high: bool = False
    money_is_billing: bool = False
    json_keys: bool = False


def read_features(system_prompt: str) -> TriageFeatures:
    """Which instructions the system prompt gives."""
    text = system_prompt.lower()
    return TriageFeatures(**{name: bool(re.search(pattern, text)) for name, pattern in _FEATURE_PATTERNS.items()})


@dataclass(frozen=True)
class Ticket:
    """What the user message says: the ticket and who sent it about what."""

    text: str
    tier: str
    product: str


def read_ticket(user_message: str) -> Ticket:
    """The ticket after a `Ticket:` line (else the whole message), and the tier and product lines before it."""
    tier = re.search(r"tier:\s*([\w-]+)", user_message, re.IGNORECASE)
    product = re.search(r"product:\s*(.+)", user_message, re.IGNORECASE)
    body = re.split(r"^\s*ticket:\s*", user_message, maxsplit=1, flags=re.IGNORECASE | re.MULTILINE)
    return Ticket(body[-1].strip(), tier.group(1).lower() if tier else "", product.group(1).strip() if product else "")


def is_about_money(ticket: str) -> bool:
    return bool(_MONEY.search(ticket))


def is_outage(ticket: str) -> bool:
    return bool(_OUTAGE.search(ticket))


def classify(ticket: str, features: TriageFeatures) -> tuple[str, str]:
    """(category, priority) the model picks for a ticket."""
    money, outage = is_about_money(ticket), is_outage(ticket)
    if money and features.money_is_billing:
        category = "billing"
    elif outage or _BROKEN.search(ticket):
        category = "bug"  # the weak prompt's mistake: "payment error" reads as a bug
    elif money:
        category = "billing"
    elif _ACCESS.search(ticket):
        category = "account"
    else:
        category = "how_to"
    if category == "how_to":
        priority = "low"
    elif outage and category == "bug" and features.outages_high:
        priority = "high"
    else:
        priority = "normal"
    return category, priority


REPLIES: dict[str, dict[str, list[str]]] = {
    "en": {
        "billing": ["Thanks for letting us know about the charge. Our billing team will review your account and "
                    "reply within one business day.",
                    "Sorry about the trouble with your payment. I have passed this to our billing team, who will "
                    "get back to you shortly."],
        "bug": ["Sorry about this problem. I have reported it to our engineers with the details you gave us, and "
                "we will update you as soon as we know more.",
                "Thanks for the report, and sorry for the trouble. Our engineering team is looking into it."],
        "account": ["I can help with your account. Please check your inbox for a verification email from us; "
                    "our account team will follow up if it does not arrive.",
                    "Thanks for reaching out about your account. Our team will verify your identity and get "
                    "back to you."],
        "how_to": ["Good question! You will find step-by-step instructions in our help center, and we are happy "
                   "to walk you through it if anything is unclear.",
                   "Thanks for asking. Our help center explains how to do this, and you can reply here if you "
                   "get stuck."],
        "urgent": ["We are treating this as urgent: our on-call engineers are working on it now and will post "
                   "updates every 30 minutes."],
    },
    "ja": {
        "billing": ["ご請求についてご連絡いただきありがとうございます。"
                    "請求担当チームが確認し、1営業日以内にご返信いたします。",
                    "お支払いの件でご迷惑をおかけして申し訳ありません。請求担当チームに引き継ぎました。"],
        "bug": ["ご不便をおかけして申し訳ありません。"
                "いただいた内容を開発チームに報告しました。進展があり次第ご連絡します。",
                "ご報告ありがとうございます。開発チームが調査しております。"],
        "account": ["アカウントの件、承知しました。確認メールをお送りしましたので、受信トレイをご確認ください。",
                    "アカウントについてのお問い合わせありがとうございます。本人確認のうえ、担当よりご連絡いたします。"],
        "how_to": ["ご質問ありがとうございます。"
                   "ヘルプセンターに手順を掲載しています。ご不明な点があればお知らせください。",
                   "お問い合わせありがとうございます。ヘルプセンターで手順をご案内しています。"],
        "urgent": ["緊急の案件として対応しています。担当エンジニアが復旧作業中で、30分ごとに状況をお知らせします。"],
    },
}


def draft_reply(category: str, priority: str, reply_lang: str, rng: random.Random) -> str:
    """The reply to the customer for a triaged ticket, in `reply_lang` (English when it has no texts for it)."""
    texts = REPLIES.get(reply_lang, REPLIES["en"])
    key = "urgent" if priority == "high" and category == "bug" else category
    return rng.choice(texts[key])


def previous_classification(messages: list[dict[str, str]]) -> tuple[str, str] | None:
    """The (category, priority) of the model's own earlier turn, if the conversation has one."""
    for message in reversed(messages):
        if message["role"] != "assistant":
            continue
        try:
            data = json.loads(message["content"])
        except ValueError:
            return None
        if isinstance(data, dict) and data.get("category") in CATEGORIES:
            priority = data.get("priority")
            return str(data["category"]), str(priority) if priority in PRIORITIES else "normal"
        return None
    return None


def answer(messages: list[dict[str, str]], temperature: float, rng: random.Random) -> str:
    """Classify the ticket (first call) or write the final JSON answer given that classification (second call)."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    features = read_features(system)
    ticket = read_ticket(first_user)
    earlier = previous_classification(messages)
    category, priority = earlier if earlier is not None else classify(ticket.text, features)
    if earlier is None:  # the first call: the classification alone
        return json.dumps({"category": category, "priority": priority})
    reply_lang = language(ticket.text) if features.matches_language else "en"
    result: dict[str, str] = {"category": category, "priority": priority,
                              "reply": draft_reply(category, priority, reply_lang, rng)}
    if not features.json_keys and priority == "low":
        del result["priority"]  # "low goes without saying": the key a loose format instruction loses
    return json.dumps(result, ensure_ascii=False)
