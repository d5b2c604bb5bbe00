"""How a passage is written for the bridge: one function for training data, traces and both adapters.

A passage with a title becomes ``"(Title: <title>) <text>"`` (the convention of "Lost in the Middle", where
our NQ passages come from); without a title it is just ``<text>``. Whitespace runs, newlines included,
become one space, so that each passage stays one ``Passage n:`` line in the reader's prompt.

Who renders what:

* the dataset loaders (:func:`bgm_model.data.load_examples`, :class:`bgm_model.data.Corpus`) render each
  record's ``title`` and ``text`` with :func:`render_passage`;
* the adapters (``BGMDocumentCompressor``, ``BGMNodePostprocessor``) render each document / node's raw text
  with the title found in its metadata (:func:`render_document`, setting ``title_key``, default ``"title"``);
* trace records keep the raw text (``document.content``) and the metadata, as the retriever returned them;
  :func:`bgm_model.data.examples_from_traces` renders them with :func:`render_document` again, so a trace
  replayed into training gives the model the very string the adapter gave it.

A text that already starts with its own title prefix (rendered upstream, e.g. a vector store filled with
rendered passages and the title kept in metadata) is not prefixed a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_TITLE_KEY", "PASSAGE_FORMAT", "render_document", "render_passage"]

#: How a titled passage is rendered.
PASSAGE_FORMAT = "(Title: {title}) {text}"
#: The metadata key the adapters and :func:`render_document` read a passage's title from by default.
DEFAULT_TITLE_KEY = "title"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_passage(title: str | None, text: str) -> str:
    """``"(Title: <title>) <text>"``, or just the text when there is no title; newlines become spaces."""
    text = _one_line(text)
    title = _one_line(title or "")
    return PASSAGE_FORMAT.format(title=title, text=text) if title else text


def render_document(
    text: str, metadata: Mapping[str, Any] | None = None, *, title_key: str | None = DEFAULT_TITLE_KEY
) -> str:
    """The passage string of a document: its text with the title from ``metadata[title_key]``.

    ``title_key=None`` (or a missing, ``None`` or empty title) renders the text alone. A non-string title is
    written with ``str()``. A text that already begins with ``"(Title: <that title>) "`` is kept as it is.
    """
    title = metadata.get(title_key) if title_key is not None and isinstance(metadata, Mapping) else None
    title = _one_line(str(title)) if title is not None else ""
    if title and _one_line(text).startswith(PASSAGE_FORMAT.format(title=title, text="")):
        return _one_line(text)
    return render_passage(title, text)
