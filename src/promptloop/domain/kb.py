"""The knowledge base of an app and BM25 retrieval over it (the "R" of the sample RAG app)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rank_bm25 import BM25Okapi

from promptloop.core.errors import InputError, input_error_from_validation
from promptloop.core.text import terms

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", re.DOTALL)


PLACEHOLDER = re.compile(r"\[\[TODO:[^\]]*\]\]")  # a fact a drafted article leaves for a person: [[TODO: ...]]


class Document(BaseModel):
    """One knowledge-base article: YAML front matter (id, title, lang, topic; `draft: true` for an article
    promptloop drafted that no person has checked yet) and a body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    lang: str = Field(pattern=r"^[a-z]{2}$")
    topic: str
    draft: bool = False
    body: str = Field(min_length=1)


def parse_document(path: Path) -> Document:
    """Read one `kb/<id>.md` file; the id must match the file name."""
    return document_from_text(path.read_text(encoding="utf-8"), path)


def document_from_text(text: str, path: Path) -> Document:
    """A document from the text of its file `path` (front matter, body); the id must match the file name."""
    match = _FRONT_MATTER.match(text)
    if not match:
        raise InputError(path, "missing YAML front matter (--- id/title/lang/topic ---)")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
        doc = Document.model_validate({**meta, "body": match.group(2).strip()})
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid front matter: {exc}") from None
    except ValidationError as exc:
        raise input_error_from_validation(path, exc) from None
    if doc.id != path.stem:
        raise InputError(path, f"id {doc.id!r} does not match the file name", field="id")
    # A person took the draft marker off but left a fact unconfirmed: the app would quote the placeholder.
    if not doc.draft and (left := PLACEHOLDER.search(doc.body)):
        raise InputError(path, f"still holds the placeholder {left.group(0)!r}: fill it in, or keep `draft: true`",
                         field="body")
    return doc


def load_kb(directory: Path) -> list[Document]:
    """The live documents of a knowledge-base folder, sorted by id. Drafts (`draft: true`) are read and
    checked but never retrieved: an unchecked article must not reach users."""
    if not directory.is_dir():
        raise InputError(directory, "knowledge-base folder not found")
    docs = [parse_document(p) for p in sorted(directory.glob("*.md"))]
    live = [d for d in docs if not d.draft]
    if not live:
        raise InputError(directory, "knowledge-base folder holds no *.md documents"
                         + (" but drafts (`draft: true`)" if docs else ""))
    return live


def render_document(doc: Document) -> str:
    """The document as a `kb/<id>.md` file: what `parse_document` reads back."""
    meta: dict[str, object] = {"id": doc.id, "title": doc.title, "lang": doc.lang, "topic": doc.topic}
    if doc.draft:
        meta["draft"] = True
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False, width=1000)
    return f"---\n{front}---\n{doc.body.strip()}\n"


@dataclass(frozen=True)
class Hit:
    """A retrieved document and its BM25 score."""

    doc: Document
    score: float


@dataclass
class Retriever:
    """BM25 over the documents' titles and bodies."""

    docs: list[Document]
    _index: BM25Okapi = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = BM25Okapi([terms(f"{d.title} {d.body}") for d in self.docs])

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The `k` best documents for `query`, best first (ties keep KB order)."""
        query_terms = terms(query)
        if not query_terms:
            return []
        scores = self._index.get_scores(query_terms)
        ranked = sorted(range(len(self.docs)), key=lambda i: (-scores[i], i))[:k]
        return [Hit(self.docs[i], float(scores[i])) for i in ranked if scores[i] > 0]


def format_context(hits: list[Hit]) -> str:
    """Documents as delimited blocks with their retrieval score: what the prompt's {context} gets."""
    return "\n".join(
        f'<doc id="{h.doc.id}" title="{h.doc.title}" score="{h.score:.2f}">\n{h.doc.body}\n</doc>' for h in hits
    )


_DOC_BLOCK = re.compile(r'<doc id="([^"]+)"(?: title="[^"]*")?(?: score="([0-9.]+)")?>\n?(.*?)\n?</doc>', re.DOTALL)


@dataclass(frozen=True)
class ContextDoc:
    """A document as a model sees it in its prompt."""

    id: str
    body: str
    score: float | None


def parse_context(text: str) -> list[ContextDoc]:
    """Every `<doc>` block in `text`: the inverse of `format_context`."""
    return [
        ContextDoc(m.group(1), m.group(3).strip(), float(m.group(2)) if m.group(2) else None)
        for m in _DOC_BLOCK.finditer(text)
    ]
