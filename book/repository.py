"""Name the course's public repository in one step: ``make repository URL=https://github.com/<owner>/minimoe``.

The address is needed in two kinds of places, and this script is the one way to set it:

- ``repository.url`` in ``book/_config.yml``: the site's repository button and each chapter's launch buttons
  (Binder, Colab, a JupyterHub) appear once it is set;
- the first code cell of every chapter in ``notebooks/``: a notebook opened in Colab (or on a hub without the course)
  runs that cell, which installs ``minimoe`` from the repository where it is missing and does nothing elsewhere.
  The cell is tagged ``remove-cell``, so the book does not show it.

``python book/repository.py --check`` (run by the tests) fails when a chapter lacks the cell or names another address.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "book" / "_config.yml"
CELL_ID = "install-minimoe"
INSTALL_SOURCE = """\
# Installs minimoe where it is missing (Colab, a hub, a fresh Python); does nothing where the course is installed.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("minimoe") is None:
    SOURCE = {source!r}
    if not SOURCE:
        raise RuntimeError("minimoe is not installed: pip install the course's repository (see its README)")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", SOURCE], check=True)"""


def pip_source(url: str) -> str:
    """What pip installs for a repository address ("" when none is set)."""
    return f"minimoe @ git+{url.rstrip('/')}" if url else ""


def configured_url(config: Path | None = None) -> str:
    """`repository.url` of the book's `_config.yml` (of `config`, a copy, when given); "" when unset."""
    config = config or CONFIG
    match = re.search(r'^repository:\n(?:  .*\n)*?  url: "?([^"\n]*)"?\n', config.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{config}: no `repository:` block with a `url:` line")
    return match.group(1).strip()


def install_cell(url: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID, "metadata": {"tags": ["remove-cell"]},
            "outputs": [], "source": INSTALL_SOURCE.format(source=pip_source(url)).splitlines(keepends=True)}


def chapters() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def set_url(url: str) -> None:
    if url and not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+?(\.git)?/?", url):
        raise SystemExit(f"URL ({url!r}) must look like https://github.com/<owner>/<repository>")
    text = CONFIG.read_text()
    new = re.sub(r'^(repository:\n(?:  .*\n)*?  url: )"?[^"\n]*"?\n', rf'\g<1>"{url}"\n', text, count=1,
                 flags=re.MULTILINE)
    CONFIG.write_text(new)
    for path in chapters():
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if c.get("id") != CELL_ID]
        cells.insert(1, install_cell(url))  # after the title
        nb["cells"] = cells
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def problems() -> list[str]:
    want = install_cell(configured_url())["source"]
    found = []
    for path in chapters():
        cells = json.loads(path.read_text())["cells"]
        mine = [i for i, c in enumerate(cells) if c.get("id") == CELL_ID]
        if mine != [1] or cells[1]["source"] != want:
            found.append(f"{path.name}: the install cell is missing, misplaced or names another repository")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="https://github.com/<owner>/<repository> ('' to unset)")
    parser.add_argument("--check", action="store_true", help="only check that every chapter agrees with the config")
    args = parser.parse_args(argv)
    if not args.check:
        if args.url is None:
            parser.error("give the repository URL, or --check")
        set_url(args.url.strip())
        print(f"repository set to {args.url or '(none)'} in {CONFIG.relative_to(ROOT)} and {len(chapters())} "
              "chapters; rebuild the book with `make book`")
    found = problems()
    print("\n".join(found) or "every chapter installs minimoe from the configured repository where it is missing")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
