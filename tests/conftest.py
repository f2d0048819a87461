"""The order the test files start in.

`make test` runs two pytest workers with `--dist loadfile --no-loadscope-reorder`, so the files are handed out in
the order collected here. The book build (tests/test_book.py executes every chapter, both editions) is by far the
longest file: it goes first, so one worker builds the book from the start while the other takes everything else.
Without this, pytest-xdist hands files out largest-count first and the build started after a dozen other files.
"""

from __future__ import annotations

FIRST = ("tests/test_book.py",)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: within a file, and among the other files, the collected order stays
