"""Document bytes -> chunks: every format, page numbers, header-aware splitting, precise failures."""

from __future__ import annotations

import itertools

import pytest

from comps.dataprep.parsing import ParseError, TextChunk, parse_document
from tests.support.documents import encrypted_pdf, make_docx, make_pdf

pytestmark = pytest.mark.unit


def texts(chunks: list[TextChunk]) -> list[str]:
    return [c.text for c in chunks]


def test_recursive_split_respects_size_and_overlap() -> None:
    words = " ".join(f"w{i:03d}" for i in range(300))  # 1499 characters
    chunks = parse_document(words.encode(), "text", 200, 40)
    assert all(len(c.text) <= 200 for c in chunks) and len(chunks) >= 8
    for left, right in itertools.pairwise(chunks):
        assert left.text.split()[-1] in right.text.split()  # neighbours share words (overlap)
    assert " ".join(texts(chunks)).split()[0] == "w000" and chunks[-1].text.endswith("w299")
    assert all(c.page is None for c in chunks)


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    text = "First paragraph about tea.\n\nSecond paragraph about coffee."
    assert texts(parse_document(text.encode(), "text", 40, 0)) == [
        "First paragraph about tea.",
        "Second paragraph about coffee.",
    ]


def test_markdown_is_split_at_headings_first() -> None:
    md = "# Title\n\nIntro.\n\n## Part A\n\nAlpha text.\n\n## Part B\n\nBeta text."
    assert texts(parse_document(md.encode(), "markdown", 1000, 0)) == [
        "# Title\nIntro.",
        "## Part A\nAlpha text.",
        "## Part B\nBeta text.",
    ]


def test_html_drops_scripts_and_navigation_and_keeps_headings() -> None:
    html = (
        b"<html><head><title>T</title><style>.x{}</style></head><body><nav>Home | About</nav>"
        b"<h1>Main</h1><p>Hello <i>there</i>\n  friend.</p><script>alert(1)</script>"
        b"<h2>Next</h2><ul><li>one</li><li>two</li></ul><footer>(c) 2026</footer></body></html>"
    )
    assert texts(parse_document(html, "html", 1000, 0)) == ["# Main\nHello there friend.", "## Next\none\ntwo"]


def test_html_without_headings_gets_its_title() -> None:
    chunks = parse_document(b"<html><head><title>Page</title></head><body><p>Body.</p></body></html>", "html", 100, 0)
    assert texts(chunks) == ["# Page\nBody."]


def test_pdf_chunks_keep_their_page() -> None:
    chunks = parse_document(make_pdf(["Alpha page.", "Beta page.", "Gamma page."]), "pdf", 100, 0)
    assert [(c.page, c.text) for c in chunks] == [(1, "Alpha page."), (2, "Beta page."), (3, "Gamma page.")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.4 broken", "the PDF is corrupt or unreadable: "),
        (b"not a pdf at all", "the PDF is corrupt or unreadable: "),
        (encrypted_pdf("hidden"), "the PDF is encrypted and needs a password"),
        (make_pdf(["", ""]), "the PDF has 2 page(s) but no extractable text"),
    ],
)
def test_unreadable_pdfs_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_document(data, "pdf", 100, 0)
    assert str(err.value).startswith(reason)


def test_pdf_encrypted_with_an_empty_password_is_read() -> None:
    assert texts(parse_document(encrypted_pdf("Open sesame.", password=""), "pdf", 100, 0)) == ["Open sesame."]


def test_docx_headings_paragraphs_and_tables() -> None:
    data = make_docx("Report", ["Sales grew.", "Costs fell."], [["region", "sales"], ["north", "12"]])
    assert texts(parse_document(data, "docx", 1000, 0)) == [
        "# Report\nSales grew.\nCosts fell.\nregion | sales\nnorth | 12"
    ]
    with pytest.raises(ParseError, match=r"^not a readable \.docx \(Word 2007\+\) file: File is not a zip file"):
        parse_document(b"plain text", "docx", 100, 0)


def test_csv_rows_become_named_fields() -> None:
    data = b"name;age\nAnn;31\nBob;\n\n"
    assert texts(parse_document(data, "csv", 1000, 0)) == ["name: Ann; age: 31\nname: Bob"]
    assert texts(parse_document(b"just,a,header\n", "csv", 1000, 0)) == ["just; a; header"]


def test_json_and_jsonl() -> None:
    assert texts(parse_document(b'[{"k": "v\xc3\xa9"}, "plain"]', "json", 1000, 0)) == ['{"k": "v\u00e9"}\n\nplain']
    assert texts(parse_document(b'{"a": {"b": 1}}', "json", 1000, 0)) == ['{\n "a": {\n  "b": 1\n }\n}']
    assert texts(parse_document(b'{"a": 1}\n\n{"b": 2}\n', "jsonl", 1000, 0)) == ['{"a": 1}\n\n{"b": 2}']
    with pytest.raises(ParseError, match=r"^invalid JSON: Expecting ',' delimiter"):
        parse_document(b'{"a": 1 "b": 2}', "json", 100, 0)
    with pytest.raises(ParseError, match=r"^line 3 is not valid JSON"):
        parse_document(b'{"a": 1}\n\n[oops\n', "jsonl", 100, 0)


def test_text_encodings() -> None:
    assert texts(parse_document("\ufeffcaf\u00e9".encode(), "text", 100, 0)) == ["caf\u00e9"]
    assert texts(parse_document("caf\u00e9".encode("latin-1"), "text", 100, 0)) == ["caf\u00e9"]
    with pytest.raises(ParseError, match=r"^the file is binary, not text"):
        parse_document(b"\x89PNG\x00\x00\xff\xfe", "text", 100, 0)


def test_whitespace_only_document_has_no_text() -> None:
    with pytest.raises(ParseError, match=r"^no text found in the markdown document$"):
        parse_document(b"  \n\n\t\n", "markdown", 100, 0)
