"""Reading one manifest file within bounds: its size, its nesting, its aliases, its documents.

A manifest folder may hold anything: a file of a gigabyte, a FIFO, a link to /dev/zero, YAML
nested a hundred thousand levels deep (which the C parser would follow until the process
crashes) or a "billion laughs" of aliases. Every such file is refused with a reason, before
it costs more than reading its bytes once.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
import yaml.events as ev

DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DEPTH = 64  # collections nested in each other; a StaticSite needs 4
MAX_DOCUMENTS = 10_000  # documents (and items of `kind: List` documents) in one file
MAX_ALIAS_NODES = 1_000_000  # nodes that YAML aliases may add to a file, once expanded

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Every collection the parser opens takes one of these characters in the text, so a text with
# fewer of them cannot nest deeper than that.
_OPENERS = "[{-?:"


class ManifestRefused(ValueError):
    """A manifest file that is not read, and why."""


class NotRegularFile(ValueError):
    """The path leads to no regular file (a FIFO, a device, a folder): it is not read."""


class FileTooLarge(ValueError):
    """The file has more bytes than allowed; `size` says how many ("N bytes", "larger than N bytes")."""

    def __init__(self, size: str) -> None:
        super().__init__(size)
        self.size = size


def read_documents(path: Path, max_bytes: int = DEFAULT_MAX_MANIFEST_BYTES) -> list[Any]:
    """The documents of one manifest file, `kind: List` documents unfolded into their items.

    Raises OSError or UnicodeDecodeError (the file cannot be read), yaml.YAMLError (it is no
    YAML) or `ManifestRefused` (it is over a limit, or no regular file).
    """
    return load_documents(_read_text(path, max_bytes))


def load_documents(text: str) -> list[Any]:
    """The documents of a manifest text, within the nesting, alias and document limits."""
    if sum(map(text.count, _OPENERS)) > MAX_DEPTH or "*" in text:
        _check_shape(text)
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except RecursionError:  # a chain of merge keys (<<) the nesting check cannot see
        raise ManifestRefused(f"the file is nested more than {MAX_DEPTH} levels deep") from None
    except (AttributeError, IndexError, KeyError, TypeError, OverflowError):
        # The loader's own failures on a value that does not fit the type its tag names
        # (`!!timestamp yesterday`, `!!bool maybe`, `!!int ''`); it reports no position.
        raise ManifestRefused(
            "a value does not fit the type its YAML tag names (such as !!timestamp, !!bool or !!int)"
        ) from None
    docs = _expand_lists(docs)
    if len(docs) > MAX_DOCUMENTS:
        raise ManifestRefused(f"the file has more than {MAX_DOCUMENTS} documents")
    return docs


def read_bounded(path: Path, max_bytes: int, opened: Callable[[os.stat_result], None] | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, read once, whatever the path leads to.

    Raises OSError (it cannot be opened or read), `NotRegularFile` or `FileTooLarge`.
    `opened` is told how the file looked when it was opened, before it is read.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer. It changes nothing for a file.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if opened is not None:
            opened(info)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(str(path))
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{info.st_size} bytes")
        data = file.read(max_bytes + 1)  # checked again: the file may have grown meanwhile
    if len(data) > max_bytes:
        raise FileTooLarge(f"larger than {max_bytes} bytes")
    return data


def _read_text(path: Path, max_bytes: int) -> str:
    try:
        data = read_bounded(path, max_bytes)
    except NotRegularFile:
        raise ManifestRefused("the file is not a regular file") from None
    except FileTooLarge as exc:
        raise ManifestRefused(_too_large(exc.size, max_bytes)) from None
    return data.decode("utf-8")


def _too_large(size: str, max_bytes: int) -> str:
    return f"the file is {size}; a manifest file may have at most {max_bytes} (--max-manifest-bytes)"


def _check_shape(text: str) -> None:
    """Walk the parser's events and refuse what is over a limit.

    The C parser reads tokens ahead of the events it gives, and may have a nesting limit of
    its own (libyaml's, higher than ours): `[` repeated a thousand times stops it before its
    first event, with its own words. When it stops with a text that the tokens it had not yet
    given could nest past our limit, the pure-Python parser (no nesting limit, slower) walks
    the text again to tell whether ours is what the text is over; if it is not, the C parser's
    error stands.
    """
    walk = _ShapeWalk()
    try:
        walk.run(_Loader(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        end = len(text) if mark is None else mark.index + 1
        if walk.depth + sum(map(text[walk.read_up_to : end].count, _OPENERS)) > MAX_DEPTH:
            with contextlib.suppress(yaml.YAMLError):  # a mistake of the text: the C parser's words
                _ShapeWalk().run(yaml.SafeLoader(text))
        raise


class _ShapeWalk:
    """One walk of a parser's events (a flat stream: no recursion) that refuses what is over a limit.

    Anchors are per document, as the loader has them. An alias counts the nodes of what it
    names, expanded: that is what a consumer that walks the document would visit.
    """

    __slots__ = ("depth", "read_up_to")

    def __init__(self) -> None:
        self.depth = 0  # collections open at the last event given
        self.read_up_to = 0  # where in the text the last event given ends

    def run(self, parser: yaml.SafeLoader | yaml.CSafeLoader) -> None:
        try:
            self._walk(parser)
        finally:
            parser.dispose()

    def _walk(self, parser: yaml.SafeLoader | yaml.CSafeLoader) -> None:
        documents = 0
        added = 0  # nodes the aliases add
        sizes: dict[str, int] = {}  # anchor -> the expanded size of its node
        open_: list[list[Any]] = []  # collections being read: [anchor, expanded size so far]
        event: Any = None
        try:
            while (event := parser.get_event()) is not None:
                size = 0
                if isinstance(event, ev.ScalarEvent):  # the most frequent, first
                    size = 1
                    if event.anchor is not None:
                        sizes[event.anchor] = 1
                elif isinstance(event, ev.CollectionStartEvent):
                    open_.append([event.anchor, 1])
                    if len(open_) > MAX_DEPTH:
                        raise ManifestRefused(f"the file is nested more than {MAX_DEPTH} levels deep")
                elif isinstance(event, ev.CollectionEndEvent):
                    anchor, size = open_.pop()
                    if anchor is not None:
                        sizes[anchor] = size
                elif isinstance(event, ev.AliasEvent):
                    size = sizes.get(event.anchor or "", 1)
                    added += size - 1
                    if added > MAX_ALIAS_NODES:
                        raise ManifestRefused(
                            f"the file's YAML aliases expand to more than {MAX_ALIAS_NODES} nodes"
                        )
                elif isinstance(event, ev.DocumentStartEvent):
                    documents += 1
                    sizes.clear()
                    if documents > MAX_DOCUMENTS:
                        raise ManifestRefused(f"the file has more than {MAX_DOCUMENTS} documents")
                if size and open_:
                    open_[-1][1] += size
        finally:  # where the parser stopped, when it stops with an error
            self.depth = len(open_)
            self.read_up_to = 0 if event is None else event.end_mark.index


def _expand_lists(docs: list[Any]) -> list[Any]:
    """Unfold `kind: List` documents (what `kubectl get -o yaml` writes) into their items."""
    out: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out
