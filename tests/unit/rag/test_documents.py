"""What `ovembed ingest` reads: text, JSON rows (.jsonl and .json arrays), PDF (pypdf) and HTML (Beautiful Soup);
binary files of other types refused with the supported types named; in a folder, other types skipped with a note."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cli_runner import run_cli
from ovembed.errors import ErrorKind, OvembedError
from ovembed.rag import read_documents

PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde"


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    """A minimal valid PDF written byte by byte: one Helvetica text line per page, an xref table, a trailer."""
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {n} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content}\nendstream")
    info = f" /Info {len(objects) + 1} 0 R" if title else ""
    if title:
        objects.append(f"<< /Title ({title}) >>")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


HTML = """<!doctype html><html><head><meta charset="utf-8"><title>Key rotation</title>
<style>p { color: red }</style><script>var secret = "not text";</script></head>
<body><nav><a href="/">Home</a></nav><h1>Rotating keys</h1><p>Rotate the <b>signing</b> key every 90 days.</p>
<ul><li>revoke the old key</li><li>publish the new one</li></ul><table><tr><td>owner</td><td>ops</td></tr></table>
<noscript>enable JavaScript</noscript></body></html>"""


def test_a_json_array_of_rows_reads_like_jsonl_rows(tmp_path):
    rows = [{"id": 1, "text": "first", "title": "One", "metadata": {"lang": "en"}}, {"_id": "b", "text": "second"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from_json = read_documents(str(tmp_path / "rows.json"))
    assert [(d.id, d.text, d.metadata) for d in from_json] == [("1", "first", {"lang": "en", "title": "One"}),
                                                              ("b", "second", {})]
    assert from_json == read_documents(str(tmp_path / "rows.jsonl"))


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "text": "x"}', 'expected an array of {"id", "text"} objects, not a JSON dict'),
    ('[{"id": "a", "text": "x"}, {"id": "b"}]', 'rows.json, item 2: needs "id" (or "_id") and a string "text"'),
    ('[{"id": "a", "text": "x", "metadata": ["not", "an", "object"]}]', 'item 1: "metadata" must be an object'),
    ('[{"id": "a", "text": "x"},', "rows.json: not JSON"),
])
def test_a_json_file_that_is_not_an_array_of_rows_names_the_problem(tmp_path, content, message):
    (tmp_path / "rows.json").write_text(content)
    with pytest.raises(OvembedError) as info:
        read_documents(str(tmp_path / "rows.json"))
    assert info.value.kind is ErrorKind.VALIDATION and message in str(info.value)


def test_a_pdf_is_read_as_the_text_of_its_pages(tmp_path):
    pdf = write_pdf(tmp_path / "guide.pdf", ["Rotate the signing key every 90 days.", "Revoke the old key."],
                    title="Key rotation")
    [doc] = read_documents(str(pdf))
    assert doc.id == "guide.pdf"
    assert doc.text == "Rotate the signing key every 90 days.\n\nRevoke the old key."
    assert doc.metadata == {"path": str(pdf), "pages": 2, "title": "Key rotation"}
    assert "%PDF" not in doc.text and "endobj" not in doc.text


def test_a_pdf_without_text_is_noted_and_a_damaged_one_refused(tmp_path):
    notes: list[str] = []
    [doc] = read_documents(str(write_pdf(tmp_path / "scan.pdf", [""])), note=notes.append)
    assert doc.text == "" and len(notes) == 1 and "no text in its 1 page(s)" in notes[0] and "OCR" in notes[0]
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    with pytest.raises(OvembedError) as info:
        read_documents(str(tmp_path / "broken.pdf"))
    assert str(info.value).startswith(f"{tmp_path / 'broken.pdf'}: not a readable PDF (")


def test_html_is_read_as_the_text_a_browser_shows(tmp_path):
    (tmp_path / "page.html").write_text(HTML)
    [doc] = read_documents(str(tmp_path / "page.html"))
    assert doc.text == ("Home\nRotating keys\nRotate the signing key every 90 days.\nrevoke the old key\n"
                        "publish the new one\nowner ops")
    assert doc.metadata == {"path": str(tmp_path / "page.html"), "title": "Key rotation"}
    latin1 = '<html><head><meta charset="iso-8859-1"></head><body><p>caf\xe9</p></body></html>'
    (tmp_path / "old.htm").write_bytes(latin1.encode("latin-1"))
    assert read_documents(str(tmp_path / "old.htm"))[0].text == "café"


@pytest.mark.parametrize("module, name", [("pypdf", "guide.pdf"), ("bs4", "page.html")])
def test_without_the_documents_extra_pdf_and_html_name_the_install(tmp_path, monkeypatch, module, name):
    write_pdf(tmp_path / "guide.pdf", ["text"])
    (tmp_path / "page.html").write_text(HTML)
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra looks like to `import`
    with pytest.raises(OvembedError) as info:
        read_documents(str(tmp_path / name))
    assert f"({module} is missing): pip install 'ovembed[documents]'" in str(info.value)


def test_a_binary_file_of_another_type_is_refused_naming_the_supported_types(tmp_path):
    (tmp_path / "logo.png").write_bytes(PNG)
    (tmp_path / "notes.rst").write_text("Any UTF-8 text file is still one document.")
    proc = run_cli("ingest", tmp_path / "logo.png", "--db", tmp_path / "x.db", "--model", tmp_path / "no-model")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "logo.png: a binary file, not one of the types ingest reads" in proc.stderr
    assert all(kind in proc.stderr for kind in (".txt", ".md", ".jsonl", ".json", ".pdf", ".html"))
    assert not (tmp_path / "x.db").exists()
    assert read_documents(str(tmp_path / "notes.rst"))[0].text == "Any UTF-8 text file is still one document."


def test_a_folder_skips_other_types_with_a_note_and_leaves_hidden_files_alone(tmp_path):
    (tmp_path / "docs" / "img").mkdir(parents=True)
    (tmp_path / "docs" / ".git").mkdir()
    (tmp_path / "docs" / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (tmp_path / "docs" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "docs" / "img" / "logo.png").write_bytes(PNG)
    (tmp_path / "docs" / "build.zip").write_bytes(b"PK\x03\x04")
    (tmp_path / "docs" / "readme.md").write_text("# Read me")
    (tmp_path / "docs" / "page.HTML").write_text(HTML)
    write_pdf(tmp_path / "docs" / "img" / "guide.pdf", ["A PDF beside a picture."])
    notes: list[str] = []
    docs = read_documents(str(tmp_path / "docs"), note=notes.append)
    assert [d.id for d in docs] == ["page.HTML", "readme.md", "img/guide.pdf"]
    assert notes == [f"skipped 2 files of other types in {tmp_path / 'docs'} (build.zip, img/logo.png); "
                     "ingest reads .txt .md .jsonl .json .pdf .html .htm"]


def test_ingest_stores_pdf_and_html_text_and_notes_what_it_skipped(tmp_path, tiny_m3_fp32):
    folder = tmp_path / "docs"
    folder.mkdir()
    write_pdf(folder / "guide.pdf", ["Rotate the signing key every 90 days."])
    (folder / "page.html").write_text(HTML)
    (folder / "logo.png").write_bytes(PNG)
    db = tmp_path / "rag.db"
    proc = run_cli("ingest", folder, "--db", db, "--model", tiny_m3_fp32, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["documents"] == 2
    assert "ovembed ingest: skipped 1 file of other types" in proc.stderr and "(logo.png)" in proc.stderr
    proc = run_cli("search", "signing key", "--db", db, "--model", tiny_m3_fp32, "-k", "10", "--json")
    assert proc.returncode == 0, proc.stderr
    texts = {hit["doc_id"]: hit["text"] for hit in json.loads(proc.stdout)}
    assert texts["guide.pdf"] == "Rotate the signing key every 90 days."
    assert texts["page.html"].startswith("Home\nRotating keys\n") and "secret" not in texts["page.html"]


def test_windows_advance_by_whole_steps_whatever_the_tokenizer_counts_as_a_words_space():
    """SentencePiece's Metaspace (XLM-R, BGE-M3) puts a word's leading space in its first token's span; WordPiece
    and whitespace splitting start the span after it. Both must cut the same windows (found: Metaspace offsets made
    every window start one token after the last, 28 chunks instead of ~14 for one XQuAD paragraph)."""
    from tokenizers import pre_tokenizers

    from ovembed.rag import chunk_spans

    text = "one two three four five six seven eight nine ten eleven twelve"
    metaspace = [span for _, span in pre_tokenizers.Metaspace().pre_tokenize_str(text)]
    whitespace = [span for _, span in pre_tokenizers.WhitespaceSplit().pre_tokenize_str(text)]
    assert metaspace[1] == (3, 7) and whitespace[1] == (4, 7)  # the difference this test is about
    expected = ["one two three four", "four five six seven", "seven eight nine ten", "ten eleven twelve"]
    assert chunk_spans(text, whitespace, 4, 1) == expected
    assert chunk_spans(text, metaspace, 4, 1) == expected
