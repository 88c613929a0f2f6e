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


def test_markdown_is_split_at_headings_first_and_chunks_start_with_their_heading_path() -> None:
    md = "# Title\n\nIntro.\n\n## Part A\n\nAlpha text.\n\n### Detail\n\nDeep.\n\n## Part B\n\nBeta text."
    assert texts(parse_document(md.encode(), "markdown", 1000, 0)) == [
        "Title\n\nIntro.",
        "Title > Part A\n\nAlpha text.",
        "Title > Part A > Detail\n\nDeep.",
        "Title > Part B\n\nBeta text.",
    ]


def test_the_heading_path_counts_in_the_size_and_long_paths_lose_their_outer_headings() -> None:
    md = "# A very long document title here\n\n## Section\n\n" + " ".join(f"w{i:03d}" for i in range(100))
    chunks = parse_document(md.encode(), "markdown", 120, 0)
    assert all(len(c.text) <= 120 for c in chunks) and len(chunks) > 4
    assert all(c.text.startswith("Section\n\n") for c in chunks)  # the whole path is over a quarter of 120


def test_sizes_in_tokens_use_the_given_counter() -> None:
    words = " ".join(f"w{i:03d}" for i in range(300))
    chunks = parse_document(words.encode(), "text", 50, 5, length=lambda t: len(t.split()))  # a token per word
    assert all(len(c.text.split()) <= 50 for c in chunks) and len(chunks) in range(6, 9)


HTML_PAGE = (
    b"<html><head><title>Expenses - Intranet</title><style>.x{}</style><script>var a = 'tracking';</script></head>"
    b"<body><nav><a href='/'>Home</a> | <a href='/hr'>HR</a> | <a href='/it'>IT desk</a></nav>"
    b"<div class='sidebar'><ul><li><a href='/m'>Canteen menu</a></li><li><a href='/p'>Parking</a></li></ul></div>"
    b"<main><article><h1>Travel and expenses</h1>"
    b"<p>This page explains how staff claim back what they spend on company business trips abroad.</p>"
    b"<h2>Meals</h2><p>On a business trip the daily meal allowance is 46 oreks. Alcohol is never reimbursed, "
    b"whatever the occasion and whoever pays for it.</p>"
    b"<h2>Claims</h2><p>Claims are filed in the Ledgerly app within 30 days of the expense, with a photo of "
    b"every receipt; they are paid with the next monthly salary.</p><ul><li>one receipt a photo</li>"
    b"<li>no paper copies</li></ul></article></main>"
    b"<footer><p>Copyright 2031 Quellmoor Works. Intranet kept by the web team.</p></footer></body></html>"
)


def test_html_keeps_the_main_content_with_its_headings_and_drops_navigation_and_footer() -> None:
    chunks = texts(parse_document(HTML_PAGE, "html", 1000, 0))
    joined = "\n".join(chunks)
    for gone in ("Home", "Canteen", "Parking", "Copyright", "tracking", ".x{}"):
        assert gone not in joined
    assert chunks[0].startswith("Travel and expenses\n\nThis page explains")
    assert any(c.startswith("Travel and expenses > Meals\n\nOn a business trip") for c in chunks)
    assert any(c.startswith("Travel and expenses > Claims\n\n") and "no paper copies" in c for c in chunks)


API_PAGE = (
    b"<html><head><title>lamp | Lamplighter docs</title></head><body>"
    b"<div id='side' class='sidebar'><div class='intro'><a href='/'>Lamplighter</a></div>"
    b"<ul><li><a href='lamp.html'>lamp</a></li><li><a href='wick.html'>wick</a></li></ul></div>"
    b"<div id='content' role='main'><h2>Lamp</h2>"
    b"<div class='api_metadata'><span>Deprecated since: v7.0.0</span></div><p></p>"
    b"<div class='api_stability'><a href='stability.html'>Stability: 0</a> - Deprecated</div>"
    b"<p>The lamp module lights the lamps of the old town, one street at a time, every evening at dusk.</p>"
    b"<h3>lamp.light(street)</h3><div class='api_metadata'><span>Added in: v0.5.1</span></div>"
    b"<p>Lights every lamp of <code>street</code> and returns how many were lit, counting broken ones too.</p>"
    b"<div class='post-meta'>Reviewed by the lamplighters' guild last winter.</div></div>"
    b"<div class='footer'>Copyright 2031 the Lamplighters. Built with docgen.</div></body></html>"
)


def test_html_keeps_short_notes_under_headings_but_not_navigation_sidebars_or_footers() -> None:
    joined = "\n".join(texts(parse_document(API_PAGE, "html", 1000, 0)))
    for kept in ("Deprecated since: v7.0.0", "Stability: 0 - Deprecated", "Added in: v0.5.1", "lights the lamps"):
        assert kept in joined
    for gone in ("wick", "Lamplighter\n", "Copyright", "Reviewed by"):  # sidebar links, footer, a note under no heading
        assert gone not in joined


def test_html_fragments_are_read_whole_and_get_the_title() -> None:
    chunks = parse_document(b"<html><head><title>Page</title></head><body><p>Body.</p></body></html>", "html", 100, 0)
    assert texts(chunks) == ["Page\n\nBody."]


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
        "Report\n\nSales grew.\nCosts fell.\nregion | sales\nnorth | 12"
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


def test_pdf_pages_carry_the_path_of_the_outline() -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Alpha page.", "Beta page.", "Gamma page."]))))
    part = writer.add_outline_item(title="Part One", page_number=0)
    writer.add_outline_item(title="Chapter B", page_number=1, parent=part)
    out = io.BytesIO()
    writer.write(out)
    assert [(c.page, c.text) for c in parse_document(out.getvalue(), "pdf", 100, 0)] == [
        (1, "Part One\n\nAlpha page."),
        (2, "Part One > Chapter B\n\nBeta page."),
        (3, "Part One > Chapter B\n\nGamma page."),
    ]
