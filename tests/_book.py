"""The book and its build, for tests/test_book.py and tests/test_book_rebuild.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = REPO / "notebooks"
HTML = BOOK / "_build" / "html"


def run_build(book: Path = BOOK, strict: bool = True) -> subprocess.CompletedProcess:
    """book/build.py, as `make book` runs it: strict, it fails on a message of the 繁體中文 edition without its
    translation; `strict=False` builds the preview (English standing in)."""
    return subprocess.run(
        [sys.executable, str(REPO / "book" / "build.py"), "--book", str(book),
         *([] if strict else ["--allow-untranslated"])],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=40 * 60,  # 11 chapters beside a busy worker
    )


def book_module(relative: str):
    """A module of book/ (build.py, i18n.py, repository.py, _ext/minimoe_book.py), loaded afresh from its file:
    book/ is not a package. It is registered in sys.modules under a name of its own (dataclasses look it up)."""
    path = BOOK / relative
    spec = importlib.util.spec_from_file_location(f"book_{path.stem}_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def book_build_module():
    return book_module("build.py")
