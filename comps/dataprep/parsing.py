"""Document bytes -> text sections -> chunks. Blocking work: call `parse_document` from a thread.

Every format becomes a list of `Section`s (a PDF: one per page, so a chunk keeps its page number, with the
heading path of the PDF's outline where it has one). Markdown, HTML and .docx become Markdown (headings as
``#``), split first at headings (MarkdownHeaderTextSplitter) so a chunk does not straddle two sections,
then recursively by size; other formats are split recursively (paragraphs, lines, words). Each chunk of a
section under headings starts with its heading path (``Title > Section > Subsection``), so that a chunk
read alone says where it comes from and the headings' words are embedded with it.

Sizes are measured by ``length``: characters (OPEA's ``chunk_size``), or the embedding model's tokens
(`parse_document`'s ``length`` is then the tokenizer's count), the heading path included. A document that
cannot be read raises `ParseError` with the precise reason.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from comps.dataprep.protocol import DocumentKind

if TYPE_CHECKING:
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from lxml.html import HtmlElement

MARKDOWN_KINDS = frozenset({"markdown", "html", "docx"})
HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
PATH_SEPARATOR = " > "
_BLANK_RUN = re.compile(r"\n\s*\n")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)
_HEADING_MARKUP = re.compile(r"`|\*\*|#+$")  # code and bold marks, a trailing anchor "#" (Sphinx, Node.js docs)
_HTML_BLOCKS = (
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "li",
    "ul",
    "ol",
    "table",
    "tr",
    "pre",
    "blockquote",
    "br",
    "hr",
    "dd",
    "dt",
    "figcaption",
    "address",
)
_HTML_DROP = ("script", "style", "noscript", "template", "svg", "head", "nav", "footer", "form", "iframe")
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo br cite code data del dfn em i ins kbd mark q s samp small span strong sub sup time u var".split()
)
NOTE_MAX_CHARS = 160  # "Added in: v8.0.0", "Deprecated since: v7.0.0", "Stability: 2 - Stable", a byline, a date


class ParseError(ValueError):
    """The document cannot be read; the message says why."""


@dataclass(frozen=True)
class Section:
    text: str
    page: int | None = None  # 1-based page (PDF); None for formats without pages
    headings: tuple[str, ...] = ()  # where the section is (a PDF page: its outline entries)


@dataclass(frozen=True)
class TextChunk:
    text: str  # the heading path line, a blank line, then the text (the path alone is not a chunk)
    page: int | None = None


def parse_document(
    data: bytes, kind: DocumentKind, chunk_size: int, chunk_overlap: int, *, length: Callable[[str], int] = len
) -> list[TextChunk]:
    """Extract and split; raises `ParseError` when the document has no readable text."""
    sections = extract(data, kind)
    chunks = split(
        sections, markdown=kind in MARKDOWN_KINDS, chunk_size=chunk_size, chunk_overlap=chunk_overlap, length=length
    )
    if not chunks:
        raise ParseError(f"no text found in the {kind} document")
    return chunks


def extract(data: bytes, kind: DocumentKind) -> list[Section]:
    extractors: dict[str, Callable[[bytes], list[Section]]] = {
        "text": lambda d: [Section(decode_text(d))],
        "markdown": lambda d: [Section(decode_text(d))],
        "html": lambda d: [Section(html_to_markdown(d))],
        "pdf": pdf_pages,
        "docx": lambda d: [Section(docx_to_markdown(d))],
        "csv": lambda d: [Section(csv_to_text(decode_text(d)))],
        "json": lambda d: [Section(json_to_text(decode_text(d)))],
        "jsonl": lambda d: [Section(jsonl_to_text(decode_text(d)))],
    }
    return [s for s in extractors[kind](data) if s.text.strip()]


def split(
    sections: list[Section], *, markdown: bool, chunk_size: int, chunk_overlap: int,
    length: Callable[[str], int] = len,
) -> list[TextChunk]:  # fmt: skip
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    chunks: list[TextChunk] = []
    for section in sections:
        parts = [(section.headings, section.text)]
        if markdown:
            by_heading = MarkdownHeaderTextSplitter(HEADERS, strip_headers=True)
            parts = [
                (
                    tuple(doc.metadata[key] for _, key in HEADERS if doc.metadata.get(key)),
                    _rstrip_lines(doc.page_content),
                )
                for doc in by_heading.split_text(section.text)
            ]
        for headings, text in parts:
            prefix = heading_path(headings, chunk_size // 4, length)
            room = chunk_size - (length(prefix + "\n\n") if prefix else 0)
            for piece in _splitter(room, min(chunk_overlap, room // 2), length).split_text(text):
                if piece.strip():
                    chunks.append(TextChunk(f"{prefix}\n\n{piece.strip()}" if prefix else piece.strip(), section.page))
    return chunks


def heading_path(headings: tuple[str, ...], most: int, length: Callable[[str], int]) -> str:
    """``A > B > C``, its outer headings dropped while it is longer than ``most`` (the last one is kept, cut)."""
    names = [name for h in headings if (name := _HEADING_MARKUP.sub("", " ".join(h.split())).strip())]
    while len(names) > 1 and length(PATH_SEPARATOR.join(names)) > most:
        names.pop(0)
    path = PATH_SEPARATOR.join(names)
    while path and length(path) > most:
        path = path[: len(path) * 3 // 4].rstrip()
    return path


def _splitter(size: int, overlap: int, length: Callable[[str], int]) -> RecursiveCharacterTextSplitter:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(chunk_size=max(size, 1), chunk_overlap=overlap, length_function=length)


def _rstrip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines())


# ----------------------------------------------------------------------------------------------- formats


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM or not); other 8-bit text as Latin-1; binary content is refused."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if b"\x00" in data[:8192]:
            raise ParseError("the file is binary, not text (it contains NUL bytes)") from None
        return data.decode("latin-1")


def pdf_pages(data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many PDFs are encrypted with an empty user password
            except DependencyError as exc:
                raise ParseError(f"the PDF is encrypted with a cipher this server cannot open: {exc}") from None
            if not opened:
                raise ParseError("the PDF is encrypted and needs a password")
        paths = _outline_paths(reader)
        pages = [
            Section(page.extract_text() or "", n, paths.get(n, ())) for n, page in enumerate(reader.pages, start=1)
        ]
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise ParseError(f"the PDF is corrupt or unreadable: {exc}") from None
    if not any(p.text.strip() for p in pages):
        raise ParseError(
            f"the PDF has {len(pages)} page(s) but no extractable text (scanned images need OCR, which is not done)"
        )
    return pages


def _outline_paths(reader: Any) -> dict[int, tuple[str, ...]]:
    """Page number -> the outline (bookmarks) path in force on that page: the last entry starting on or before it."""
    starts: list[tuple[int, tuple[str, ...]]] = []

    def walk(items: list[Any], path: tuple[str, ...]) -> None:
        last: tuple[str, ...] = path
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            try:
                page = reader.get_destination_page_number(item) + 1
            except Exception:  # a broken outline entry is skipped, the page text is still read
                continue
            last = (*path, str(item.title or "").strip())
            starts.append((page, last))

    try:
        walk(reader.outline, ())
    except Exception:  # a broken outline: pages without headings
        return {}
    paths: dict[int, tuple[str, ...]] = {}
    current: tuple[str, ...] = ()
    by_page = sorted(starts, key=lambda s: s[0])  # stable: entries of one page keep outline order
    i = 0
    for n in range(1, len(reader.pages) + 1):
        while i < len(by_page) and by_page[i][0] <= n:
            current = by_page[i][1]
            i += 1
        if current:
            paths[n] = current
    return paths


def html_to_markdown(data: bytes) -> str:
    """The main content of an HTML page as Markdown (headings as ``#`` lines, lists, tables, code), without
    navigation, sidebars, footers and scripts (trafilatura), with the short notes under headings that it would
    drop (`keep_heading_notes`); the page's title as first heading when the content has none. A page where
    trafilatura finds no main content (a fragment, a tiny page) is read whole."""
    import trafilatura

    title = _html_title(data)
    page = trafilatura.load_html(data)
    if page is not None:
        keep_heading_notes(page)
    body = trafilatura.extract(
        data if page is None else page, output_format="markdown", include_tables=True, include_comments=False,
        include_links=False, include_images=False, include_formatting=True, favor_recall=True, deduplicate=False,
        with_metadata=False,
    ) or _visible_text(data)  # fmt: skip
    body = _BLANK_RUN.sub("\n\n", body).strip()
    if title and not body.startswith("#"):
        body = f"# {title}\n\n{body}"
    return body


def keep_heading_notes(tree: HtmlElement) -> None:
    """Short lines of text in ``div``s of their own right under a heading ("Added in: v8.0.0", "Deprecated since:
    v7.0.0", "Stability: 2 - Stable", a post's date) become plain paragraphs, so that trafilatura keeps them: it
    drops blocks by their class names (``api_metadata`` holds "meta") and by their share of link text. Only a
    ``div`` of inline content, at most `NOTE_MAX_CHARS` of text, at most half of it link text, whose previous
    sibling with text is a heading or such a note, is changed; the blocks around it (navigation, sidebars,
    footers: lists of links, containers) keep their names and are judged by trafilatura as before."""
    notes: set[HtmlElement] = set()
    for div in list(tree.iter("div")):  # document order: a note after a note is seen after it
        if _is_note(div) and _after_heading(div, notes):
            notes.add(div)
    for div in notes:
        div.attrib.clear()
        div.tag = "p"


def _is_note(element: HtmlElement) -> bool:
    if any(isinstance(c.tag, str) and c.tag not in _INLINE_TAGS for c in element):
        return False
    text = " ".join(element.text_content().split())
    links = sum(len(" ".join(a.text_content().split())) for a in element.iter("a"))
    return 0 < len(text) <= NOTE_MAX_CHARS and links * 2 <= len(text)


def _after_heading(element: HtmlElement, notes: set[HtmlElement]) -> bool:
    before = element.getprevious()
    while before is not None and (not isinstance(before.tag, str) or not before.text_content().strip()):
        before = before.getprevious()  # comments and empty elements (<p></p>) in between
    if before is None:
        return False
    return before.tag in _HEADING_TAGS or before in notes


def _html_title(data: bytes) -> str:
    found = _TITLE.search(data)
    if not found:
        return ""
    return " ".join(html.unescape(found.group(1).decode("utf-8", "replace")).split())


def _visible_text(data: bytes) -> str:
    """Visible text with headings as Markdown ``#`` lines and blocks as paragraphs (the fallback)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "lxml")
    for tag in soup(_HTML_DROP):
        tag.decompose()
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_after("\n\n")
    paragraphs = [" ".join(p.split()) for p in _BLANK_RUN.split(soup.get_text())]
    return "\n\n".join(p for p in paragraphs if p)


def docx_to_markdown(data: bytes) -> str:
    import zipfile

    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ParseError(f"not a readable .docx (Word 2007+) file: {exc}") from None
    except Exception as exc:  # python-docx raises its own types for broken packages
        raise ParseError(f"not a readable .docx (Word 2007+) file: {type(exc).__name__}: {exc}") from None
    blocks: list[str] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            for row in item.rows:
                cells = [c.text.strip() for c in row.cells]
                if any(cells):
                    blocks.append(" | ".join(cells))
            continue
        text = item.text.strip()
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        level = 1 if style == "Title" else _heading_level(style)
        blocks.append(f"{'#' * level} {text}" if level else text)
    return "\n\n".join(blocks)


def _heading_level(style: str) -> int:
    if style.startswith("Heading "):
        tail = style[len("Heading ") :]
        if tail.isdigit():
            return min(int(tail), 6)
    return 0


def csv_to_text(text: str) -> str:
    """One line per row: ``header: value; header: value``."""
    sample = text[:16384]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise ParseError(f"the CSV is malformed: {exc}") from None
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    if not body:
        return "; ".join(header)
    lines = []
    for row in body:
        names = header + [f"column {i + 1}" for i in range(len(header), len(row))]
        lines.append("; ".join(f"{h.strip()}: {v.strip()}" for h, v in zip(names, row, strict=False) if v.strip()))
    return "\n".join(lines)


def json_to_text(text: str) -> str:
    """A list: one record per paragraph; anything else: pretty-printed."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc}") from None
    if isinstance(value, list):
        return "\n\n".join(_record(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)


def jsonl_to_text(text: str) -> str:
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_record(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ParseError(f"line {n} is not valid JSON: {exc}") from None
    return "\n\n".join(records)


def _record(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
