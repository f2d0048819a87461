"""Citations: every cited key exists, section references name their paper, nothing points outside the repository.

The course cites papers in two ways. Notebooks and book pages use MyST roles, `` {cite}`key` `` (also ``{cite:p}``
and ``{cite:t}``), whose keys must be in ``book/references.bib``. Prose, docstrings and comments name a section,
and a "§" must belong to a reference that says which paper it is in:

    DeepSeek-V3 §2.1.2, Eq. (16)        V3 §4.5.3        DeepSeek-V2 §2.1.2–2.1.3 and App. C
    {cite}`deepseekv2` §2.1.3           DeepSeek-R1 (§2.2–2.3)        Peng et al. 2023, §3.2

i.e. a source (a paper's name, its short form V2 / V3 / R1, an author-year, or a ``{cite}`` role), then, with only
further section, equation, table, appendix or figure numbers in between, the "§" and its number. A bare "§5" (which
paper?) fails. Published figures themselves are listed in ``book/sources.md``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIB = ROOT / "book" / "references.bib"

CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")
BIB_KEY = re.compile(r"^@\w+\{\s*([^,\s]+)\s*,", re.MULTILINE)

# A source: the papers the course cites by name, their short forms, an author-year or a {cite} role.
SOURCE = (r"(?:DeepSeek-V2(?:-Lite)?|DeepSeek-V3|DeepSeek-R1(?:-Zero)?|DeepSeekMath|DeepSeekMoE|V2|V3|R1|YaRN|PPO|"
          r"DAPO|Dr\. GRPO|[A-Z][a-z]+ et al\.,? \d{4}[a-z]?|\{cite(?::[a-z]+)?\}`[^`]+`)")
SECTION = r"§\s?\d+(?:\.\d+)*(?:\s?[–-]\s?\d+(?:\.\d+)*)?"
NUMBER = r"\(?\d+[a-z]?\)?(?:\s?[–-]\s?\(?\d+\)?)?"
# What may stand between a source and its "§": more sections, equations, tables, appendices, figures, separators.
LINK = (rf"(?:\s+|[,;(]|and|or|{SECTION}|Eqs?\.\s?{NUMBER}|Tables?\s{NUMBER}|App\.\s?[A-Z](?:\.\d+)?|"
        rf"Figure\s\d+|Algorithm\s\d+|\{{cite(?::[a-z]+)?\}}`[^`]+`)")
SECTION_REFERENCE = re.compile(rf"{SOURCE}(?:{LINK})*\Z")
LOOKBACK = 160

_FACTS = "facts" + r"[\s_-]+" + "sheet"  # spelled apart so that this file does not match itself
FORBIDDEN = {
    "a reference document that is not in the repository (cite the paper or book/sources.md)":
        re.compile(_FACTS, re.IGNORECASE),
    "a 'shared/' folder outside the repository": re.compile(r"(?<![\w.-])(?:\.\./)?" + "shared" + r"/"),
    # a path such as /work/... in prose or code; a synthetic file:/// URL in a test fixture is not one
    "an absolute machine path": re.compile(r"(?<![\w.~/-])/(?:" + "work|root" + r")/"),
}

PROSE = {".md", ".ipynb", ".yml", ".cff", ".txt"}
TMP_PATH = re.compile(r"(?<![\w.~/-])/" + "tmp" + r"/")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = []
    for name in names:
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (checkpoints, images)
        files.append(path)
    return files


def notebook_text(path: Path) -> str:
    return "\n\n".join("".join(cell["source"]) for cell in json.loads(path.read_text(encoding="utf-8"))["cells"])


def cited_texts() -> dict[str, str]:
    """The text of every notebook, every module of minimoe/ and benchmarks/, every book page."""
    texts = {str(p.relative_to(ROOT)): notebook_text(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    for pattern in ("minimoe/**/*.py", "benchmarks/*.py", "book/*.md", "docs/*.md", "README.md"):
        for p in sorted(ROOT.glob(pattern)):
            texts[str(p.relative_to(ROOT))] = p.read_text(encoding="utf-8")
    return texts


TEXTS = cited_texts()


def bib_keys() -> set[str]:
    return set(BIB_KEY.findall(BIB.read_text(encoding="utf-8")))


def test_the_texts_are_found():
    assert any(name.startswith("notebooks/") for name in TEXTS)
    assert "book/sources.md" in TEXTS and "minimoe/config/presets.py" in TEXTS


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_every_cited_key_is_in_the_bibliography(name):
    keys = bib_keys()
    cited = {key.strip() for group in CITE.findall(TEXTS[name]) for key in group.split(",")}
    cited.discard("key")  # the bibliography page shows the syntax with a placeholder key
    assert not cited - keys, f"{name} cites keys missing from book/references.bib: {sorted(cited - keys)}"


def bad_section_references(text: str) -> list[str]:
    bad = []
    for match in re.finditer("§", text):
        before = text[max(0, match.start() - LOOKBACK):match.start()]
        if not SECTION_REFERENCE.search(before):
            bad.append(text[max(0, match.start() - 60):match.end() + 12].replace("\n", " "))
    return bad


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_section_references_name_their_paper(name):
    bad = bad_section_references(TEXTS[name])
    assert not bad, (f"{name}: a '§' must follow its paper, e.g. 'DeepSeek-V3 §2.1.2, Eq. (16)' or "
                     f"'{{cite}}`deepseekv2` §2.1.3'; found:\n" + "\n".join(f"  ...{b}..." for b in bad))


@pytest.mark.parametrize("text, ok", [
    ("DeepSeek-V3 §2.1.2, Eq. (16)", True),
    ("see V3 §4.5.3 for the study", True),
    ("DeepSeek-V2 §2.1.2–2.1.3 and App. C", True),
    ("DeepSeek-V2 {cite}`deepseekv2` (§2.1, Table 1, Table 9, §3.1.2)", True),
    ("({cite}`deepseekv2` §2.1.3)", True),
    ("Peng et al. 2023, §3.2–3.3", True),
    ("the dense comparison of §5 is fair", False),
    ("a cache quantised to 6 bits (§3.2.3)", False),
])
def test_the_section_reference_pattern(text, ok):
    assert (not bad_section_references(text)) == ok


def test_no_file_points_outside_the_repository():
    offences = []
    for path in tracked_text_files():
        name = str(path.relative_to(ROOT))
        if name == "tests/test_citations.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offences += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {what}"
                     for what, pattern in FORBIDDEN.items() for m in pattern.finditer(text)]
        if path.suffix in PROSE:  # code may name paths inside a sandbox (/tmp/…); prose names none of this machine
            offences += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: a path in this machine's /tmp"
                         for m in TMP_PATH.finditer(text)]
    assert not offences, "tracked files point outside the repository:\n" + "\n".join(offences)
