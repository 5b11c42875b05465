"""The documents the code cites exist, and every section they cite does.

Docstrings, comments, presets and the READMEs point at ``docs/methods.md`` (the formulas) and
``docs/conventions.md`` (file, frame, exit-code and naming conventions) as "methods.md section 1"
and the like, sometimes with a subsection name in quotes (``methods.md section 1, "omega
variants"``). This test parses the numbered headings of ``docs/*.md``
(``## 1. Title``, ``### 1.6 Title``), finds every such citation in the repository's text files and
fails on a citation of a missing file, of a missing section number, or of a quoted name that
no heading of that section carries. Citations of the project's reference material
(``shared/docs/...``) point outside the repository and are not checked.

Pure text processing: no torch, no package import.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CITED_DOCS = ("methods.md", "conventions.md")
#: Where citations are looked for (the package, the app, the workflows, benchmarks, tests, docs).
SCANNED = ("inrreg_pipeline", "bids_app", "workflows", "benchmarks", "tests", "docs", "README.md")
SUFFIXES = {".py", ".md", ".json", ".rst", ".txt", ".toml", ".cfg", ".sh", ".sbatch", ".yml", ".yaml"}
SKIP_PARTS = {".venv", "__pycache__", ".git", ".pytest_cache", "node_modules"}

_HEADING = re.compile(r"^(#{2,6})\s+(\d+(?:\.\d+)*)\.?\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_DOC = re.compile(r"(?P<path>[\w./-]*?)\b(?P<doc>methods|conventions)\.md\b")
#: "section N" (or "sections N and M"), not "section N of <another document>", with optional
#: quoted subsection names right after it: ``section 1, "Extensions" and "omega variants"``.
_SECTION = re.compile(r"\bsections?\s+(?P<nums>\d+(?:\.\d+)*(?:\s*(?:,|and|&)\s*\d+(?:\.\d+)*)*)"
                      r"(?!\s+of\b)(?P<names>(?:\s*(?:,|and)?\s*\"[^\"\n]{1,80}\")*)")
_NUMBER = re.compile(r"\d+(?:\.\d+)*")
_QUOTED = re.compile(r"\"([^\"\n]{1,80})\"")
#: A citation's context ends at the next file name (another document's sections are its own), a
#: blank line or the end of a sentence.
_END = re.compile(r"\n\s*\n|\.(?=\s|$)|\b[\w-]+\.(?:md|rst|txt|py|json)\b")
WINDOW = 240


def headings(path: Path) -> dict[str, str]:
    """``{number: title}`` of the numbered headings of a Markdown file (code fences skipped)."""
    out: dict[str, str] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            number = match[2]
            assert number not in out, f"{path.name}: section {number} is numbered twice"
            out[number] = match[3]
    return out


def citations(text: str) -> list[tuple[str, str, tuple[str, ...], int]]:
    """``(document, section, quoted names, offset)`` of every section citation in ``text``, plus
    ``(document, "", (), offset)`` for a document cited without a section. Citations of
    ``shared/...`` (the reference material outside the repository) are left out."""
    found = []
    for match in _DOC.finditer(text):
        if "shared/" in match["path"]:
            continue
        doc = f"{match['doc']}.md"
        rest = text[match.end():match.end() + WINDOW]
        end = _END.search(rest)
        window = rest[:end.start()] if end else rest
        sections = list(_SECTION.finditer(window))
        if not sections:
            found.append((doc, "", (), match.start()))
        for sec in sections:
            names = tuple(_QUOTED.findall(sec["names"]))
            numbers = _NUMBER.findall(sec["nums"])
            for i, number in enumerate(numbers):  # quoted names belong to the last number
                found.append((doc, number, names if i == len(numbers) - 1 else (), match.start()))
    return found


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for f in candidates:
            if (f.is_file() and f.suffix in SUFFIXES and not SKIP_PARTS & set(f.parts)
                    and f.resolve() != Path(__file__).resolve()):
                files.append(f)
    return files


def all_citations() -> list[tuple[Path, int, str, str, tuple[str, ...]]]:
    out = []
    for f in scanned_files():
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for doc, number, names, offset in citations(text):
            out.append((f.relative_to(ROOT), text.count("\n", 0, offset) + 1, doc, number, names))
    return out


def problems(cites, docs: dict[str, dict[str, str] | None]) -> list[str]:
    """One line per citation that does not resolve in ``docs`` (``{name: headings or None}``)."""
    bad = []
    for path, line, doc, number, names in cites:
        where = f"{path}:{line}"
        table = docs.get(doc)
        if table is None:
            bad.append(f"{where}: cites docs/{doc}, which does not exist")
            continue
        if not number:
            continue
        if number not in table:
            bad.append(f"{where}: cites {doc} section {number}, but {doc} has sections "
                       f"{', '.join(sorted(table, key=lambda n: [int(p) for p in n.split('.')]))}")
            continue
        subtree = [title.lower() for n, title in table.items() if n == number or n.startswith(number + ".")]
        for name in names:
            if not any(name.lower() in title for title in subtree):
                bad.append(f"{where}: cites {doc} section {number}, \"{name}\", but no heading of section "
                           f"{number} is called that")
    return bad


def _doc_headings() -> dict[str, dict[str, str] | None]:
    return {name: headings(DOCS / name) if (DOCS / name).is_file() else None for name in CITED_DOCS}


@pytest.mark.parametrize("name", CITED_DOCS)
def test_cited_documents_exist_with_numbered_sections(name):
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is cited by the code but missing"
    table = headings(path)
    top = sorted(int(n) for n in table if "." not in n)
    assert top == list(range(1, len(top) + 1)), f"docs/{name}: top-level sections {top} are not 1..n"
    for number in table:
        parent = number.rsplit(".", 1)[0]
        assert "." not in number or parent in table, f"docs/{name}: section {number} has no section {parent}"


def test_every_cited_section_exists():
    cites = all_citations()
    bad = problems(cites, _doc_headings())
    assert not bad, "citations that do not resolve:\n" + "\n".join(bad)


def test_the_scan_sees_the_known_citations():
    """Guard against a scan that silently finds nothing (moved folders, a broken pattern)."""
    cites = all_citations()
    sections = {(doc, number) for _, _, doc, number, _ in cites}
    assert ("methods.md", "1") in sections and ("methods.md", "2") in sections
    assert any(doc == "conventions.md" for _, _, doc, _, _ in cites)
    named = {name for *_, names in cites for name in names}
    assert "omega variants" in named


def test_a_bad_citation_is_reported():
    text = ('"""See methods.md section 9 and docs/methods.md section 1, "no such part".\n'
            'Formulas: shared/docs/methods.md section 7 (the reference, not checked).\n'
            'Also conventions.md (no section) and missing.md section 3.\n"""')
    cites = [(Path("x.py"), 1, doc, number, names) for doc, number, names, _ in citations(text)]
    assert {(doc, number) for _, _, doc, number, _ in cites} == {("methods.md", "9"), ("methods.md", "1"),
                                                               ("conventions.md", "")}
    docs = {"methods.md": {"1": "Deformation INR", "1.6": "omega variants"}, "conventions.md": None}
    bad = problems(cites, docs)
    assert len(bad) == 3, bad
    assert any("section 9" in b for b in bad)
    assert any("no such part" in b for b in bad)
    assert any("docs/conventions.md, which does not exist" in b for b in bad)


def test_sections_of_another_document_and_continuations():
    """``section 4 of X`` is not a citation of the document named before it; a citation may go on
    to the next comment line (``(docs/methods.md section 1), ...\\n#: (section 2)``)."""
    text = ("(`conventions.md` and section 4 of the reference)\n"
            "#: the INR (docs/methods.md section 1), the two-network method\n#: (section 2) and svf.\n")
    found = [(doc, number) for doc, number, _, _ in citations(text)]
    assert found == [("conventions.md", ""), ("methods.md", "1"), ("methods.md", "2")]
