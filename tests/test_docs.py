"""The architecture pages agree with the tree: every module of the package appears in docs/internals.md's module
tree, every module the tree names exists, and docs/architecture.md names every subpackage and top-level module."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minimoe"


def _modules() -> set[str]:
    """Public modules as paths relative to the package, e.g. ``moe/gate.py`` (no ``__init__``, no ``_private``)."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if not p.name.startswith("_") and "checkpoints" not in p.parts}


def _tree() -> set[str]:
    """The modules docs/internals.md's tree lists, as ``folder/name.py``: a top-level entry is a module or a folder;
    every ``name.py`` on a folder's lines (its own and the indented ones below it) is one of its modules."""
    text = (ROOT / "docs" / "internals.md").read_text(encoding="utf-8")
    block = re.search(r"```\nminimoe/.*?\n```", text, re.DOTALL).group(0).splitlines()[2:]
    listed, folder = set(), ""
    for line in block:
        if not line.startswith("  "):  # notebooks/, book/, …: the package's tree has ended
            break
        entry = line.split()[0] if line.strip() else ""
        if not line.startswith("   ") and entry:  # a top-level entry (two spaces)
            folder = entry if entry.endswith("/") else ""
            if not folder:
                listed.add(entry)
                continue
        if folder:
            listed |= {folder + name for name in re.findall(r"\b(\w+\.py)\b", line)}
    return listed


def test_every_module_is_in_the_internals_tree_and_nothing_else():
    modules, tree = _modules(), _tree()
    assert sorted(modules - tree) == [], "modules missing from docs/internals.md's tree"
    assert sorted(tree - modules) == [], "docs/internals.md's tree names modules that do not exist"


def test_the_architecture_page_names_every_subpackage_and_top_level_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    top = {m.split("/")[0] for m in _modules()} - {"norm.py"}  # RMSNorm sits with the head: `minimoe/norm.py`
    missing = sorted(name for name in top if f"minimoe/{name}" not in text
                     and f"minimoe/{name.removesuffix('.py')}" not in text)
    assert missing == [], "docs/architecture.md does not say where these live"


REPO_PATH = re.compile(r"\b((?:tests|benchmarks|notebooks|assignments|docs|book|minimoe|hub)/[\w./-]*\w\.(?:py|md|ipynb))\b")


def test_paths_named_in_the_package_docs_and_readme_exist():
    """Every repository file a docstring of the package, a page of docs/ or the README names (``tests/test_x.py``,
    ``benchmarks/y.py``, …) exists: a renamed file leaves no stale pointer behind."""
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    stale = sorted({f"{src.relative_to(ROOT)}: {path}" for src in sources
                    for path in REPO_PATH.findall(src.read_text(encoding="utf-8"))
                    if not (ROOT / path).exists() and not re.search(r"\b(NN|aN)_name\b", path)})  # placeholders
    assert stale == [], "files named that do not exist:\n" + "\n".join(stale)
