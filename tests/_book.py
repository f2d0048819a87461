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


def book_build_module():
    spec = importlib.util.spec_from_file_location("book_build", BOOK / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
