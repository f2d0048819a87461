"""The build's incremental execution on a book of two tiny chapters: only an edited chapter executes again, the
繁體中文 edition reuses the execution, and a cell error fails the build. Apart from tests/test_book.py so that it
runs beside the real book's build on the other test worker.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from _book import BOOK, book_build_module, run_build


def write_tiny_notebook(path: Path, n: int, code: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(f"# Tiny chapter {n}\n\n$e^{{i\\pi}} = -1$"),
               nbformat.v4.new_code_cell(code)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)


def table_states(log: str) -> dict[str, str]:
    return dict(re.findall(r"^(\d\d_\w+)\s+[\d.]+s\s+(executed|cached)", log, re.MULTILINE))


@pytest.mark.slow
def test_rebuild_reexecutes_only_the_edited_chapter_and_a_cell_error_fails_it(tmp_path):
    book_build_module().vendor(BOOK)  # the site's JavaScript, unpacked once into BOOK/_vendor (or by a build now)
    vendor = BOOK / "_vendor"
    book = tmp_path / "book"
    shutil.copytree(BOOK, book, ignore=shutil.ignore_patterns("_build", "_vendor", "chapters", "__pycache__"))
    (book / "_vendor").symlink_to(vendor)
    (tmp_path / "notebooks").mkdir()
    write_tiny_notebook(tmp_path / "notebooks" / "00_first.ipynb", 0, "print(6 * 7)")
    write_tiny_notebook(tmp_path / "notebooks" / "03_second.ipynb", 3, "print(2 ** 10)")
    for page in book.glob("*.md"):  # the front matter links the real chapters, absent from this tiny book
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"\{doc\}`([^`<]*?)\s*<chapters/[^>]+>`", r"\1", text)
        page.write_text(re.sub(r"\{doc\}`chapters/[^`]+`", "a chapter", text), encoding="utf-8")

    first = run_build(book, strict=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert table_states(first.stdout) == {"00_first": "executed", "03_second": "executed"}
    assert "1024" in (book / "_build" / "html" / "chapters" / "03_second.html").read_text(encoding="utf-8")

    write_tiny_notebook(tmp_path / "notebooks" / "03_second.ipynb", 3, "print(2 ** 11)")
    second = run_build(book, strict=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert table_states(second.stdout) == {"00_first": "cached", "03_second": "executed"}
    assert "2048" in (book / "_build" / "html" / "chapters" / "03_second.html").read_text(encoding="utf-8")

    # The 繁體中文 edition reads the same execution: nothing ran again, and a strict build names what is untranslated.
    assert "jupyter-cache" not in second.stderr, second.stderr[-2000:]  # "… executed NN again: its chapters must come"
    assert (book / "_build" / "html" / "zh-hant" / "chapters" / "03_second.html").exists()
    strict = run_build(book, strict=True)
    assert strict.returncode != 0, strict.stdout[-2000:]
    assert re.search(r"chapters/03_second\.ipynb:\d+: .*messages have no translation in .*chapters/03_second\.po.*"
                     r"Tiny chapter 3", strict.stdout + strict.stderr), (strict.stdout + strict.stderr)[-3000:]
    assert table_states(strict.stdout) == {"00_first": "cached", "03_second": "cached"}

    write_tiny_notebook(tmp_path / "notebooks" / "03_second.ipynb", 3, "raise RuntimeError('broken chapter')")
    broken = run_build(book, strict=False)
    assert broken.returncode != 0
    assert "broken chapter" in broken.stdout + broken.stderr
    assert re.search(r"^03_second\s+-\s+FAILED", broken.stdout, re.MULTILINE), broken.stdout[-2000:]
