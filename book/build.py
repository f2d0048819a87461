"""Build the course site: execute every chapter and write both editions of the book to book/_build/html.

Called by `make book`. The steps:

1. link the chapters in: `book/chapters -> ../notebooks` (Jupyter Book drops toc entries outside `book/`);
2. vendor the JavaScript the site serves itself, so that it works offline: MathJax 3 (its `es5` build),
   require.js and the ipywidgets HTML manager, fetched once with `npm pack` into `book/_vendor` and reused;
3. `jupyter-book build book -W -n --keep-going`: every warning and every cell error fails the build;
   notebook outputs are cached in `book/_build/.jupyter_cache`, so a rebuild re-executes only the chapters
   that changed; a change to the `minimoe` package the kernel imports empties the cache first (the chapters'
   outputs come from it, and jupyter-cache sees only the notebooks' code);
4. the 繁體中文 edition into `book/_build/html/zh-hant` (book/i18n.py): Sphinx with `language = "zh_HK"` and
   the catalogs of `book/locales`, reading the executed notebooks from the same jupyter-cache, so no chapter
   executes twice (the build checks that none did). It fails on any untranslated or fuzzy message, naming the
   catalog and the message (`--allow-untranslated` lists them and builds anyway, English standing in);
5. write `minimoe-notebooks.zip` next to the site's index.html: every chapter as an executed notebook (today's
   text, the outputs of this build, no execution metadata), with a first cell that installs `minimoe` where it
   is missing, and a README;
6. print how long each chapter took to execute (from the jupyter-cache records) and how to open the site.

Usage: `python book/build.py [--book DIR] [--allow-untranslated]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent

# npm package spec -> (folder inside the package tarball, folder under _static/vendor)
VENDORED = {
    "mathjax@3.2.2": ("package/es5", "mathjax/es5"),
    "requirejs@2.3.8": ("package", "requirejs"),
    "@jupyter-widgets/html-manager@1.0.15": ("package/dist", "html-manager/dist"),
}
# Files inside each copied folder that the site does not need (source maps, the r.js optimiser, npm metadata).
SKIP_SUFFIXES = (".map",)
SKIP_NAMES = {"bin", "package.json", "README.md"}

NOTEBOOK_FAILED = re.compile(r"([^/\s]+)\.ipynb: WARNING: Executing notebook failed")
# The budgets on a 2-core laptop (execution seconds; the report flags what is over): a chapter 90 s, chapters 0-10
# together 5 minutes; a Part V chapter 3 minutes, because its measurements need it (chapter 11 compares five
# methods over seeds, chapter 12 trains nine runs of thirty GRPO steps, each pair of runs the least that shows its
# failure); the whole build, both editions, 15 minutes.
CHAPTER_BUDGET_S = 90
CORE_BUDGET_S = 5 * 60
LONG_CHAPTERS = ("11_a_model_for_hong_kong", "12_when_grpo_goes_wrong")
LONG_CHAPTER_BUDGET_S = 3 * 60
BOOK_BUDGET_S = 15 * 60


def link_chapters(book: Path) -> None:
    """Make `book/chapters` a symlink to the repository's `notebooks/` folder."""
    link = book / "chapters"
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            raise SystemExit(f"{link} must be a symlink to ../notebooks, found a real folder or file")
        return
    link.symlink_to(Path("..") / "notebooks", target_is_directory=True)


def tarball_name(spec: str) -> str:
    """The file `npm pack SPEC` writes, e.g. "@jupyter-widgets/html-manager@1.0.15" ->
    "jupyter-widgets-html-manager-1.0.15.tgz"."""
    return spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"


def fetch_tarball(spec: str, folder: Path) -> Path:
    """`npm pack SPEC` into `folder`, unless an earlier build left the tarball there."""
    tarball = folder / tarball_name(spec)
    if tarball.exists():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            f"npm is needed once to fetch {spec} into {folder} (no Python package ships MathJax 3 or the "
            "ipywidgets HTML manager). Install Node.js/npm, or copy book/_vendor from a machine that built "
            "the book."
        )
    print(f"vendoring {spec}", flush=True)
    subprocess.run([npm, "pack", "--silent", spec], cwd=folder, check=True, capture_output=True, text=True)
    return tarball


def vendor(book: Path) -> Path:
    """Unpack the vendored JavaScript into `book/_vendor/site/_static/vendor` unless it is already there. Two
    processes may call it at once (a build and a test of a small book that reuses this folder): one unpacks, the
    other waits for it and finds the folder ready."""
    (book / "_vendor").mkdir(parents=True, exist_ok=True)
    with open(book / "_vendor" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _unpack_vendored(book)


def _unpack_vendored(book: Path) -> Path:
    site_vendor = book / "_vendor" / "site" / "_static" / "vendor"
    stamp = site_vendor / "VERSIONS.json"
    wanted = sorted(VENDORED)
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return site_vendor
    tarballs = book / "_vendor" / "npm"
    tarballs.mkdir(parents=True, exist_ok=True)
    if site_vendor.exists():
        shutil.rmtree(site_vendor)
    for spec, (inner, target) in VENDORED.items():
        tarball = fetch_tarball(spec, tarballs)
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tgz:
            if hasattr(tarfile, "data_filter"):
                tgz.extractall(tmp, filter="data")
            else:
                tgz.extractall(tmp)  # Python before 3.10.12 has no extraction filters
            shutil.copytree(
                Path(tmp) / inner,
                site_vendor / target,
                ignore=lambda _dir, names: [n for n in names if n in SKIP_NAMES or n.endswith(SKIP_SUFFIXES)],
            )
            licence = Path(tmp) / "package" / "LICENSE"
            if licence.exists():
                shutil.copy(licence, site_vendor / target.split("/")[0] / "LICENSE")
    stamp.write_text(json.dumps(wanted))
    return site_vendor


def kernel_profile(book: Path) -> Path:
    """An IPython folder whose start-up file (`_ext/kernel_startup.py`) the chapters' kernels run during the build:
    progress bars recorded as their final line of text, figures recorded with a description for their alt text."""
    ipython = book / "_build" / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    shutil.copy(book / "_ext" / "kernel_startup.py", startup / "00-minimoe-book.py")
    return ipython


class LogFilter:
    """Drops two kinds of lines from jupyter-book's log that only mislead a reader of it:

    - ipykernel's "Kernel is running over TCP without encryption" warning, printed once per chapter: the kernels
      listen on 127.0.0.1 only, for the build's own process;
    - jupyter-book's closing box, which suggests opening the site through a file:// URL, where the search and the
      widgets do not work; print_report says how to serve it instead.
    """

    TCP_WARNING = "Kernel is running over TCP without encryption"
    BOX_START = "Finished generating HTML for book"

    def __init__(self):
        self.tcp_warnings = 0
        self.pending_border: str | None = None  # a line of "=" that may open jupyter-book's box
        self.in_box = False

    @staticmethod
    def is_border(line: str) -> bool:
        text = line.strip()
        return len(text) > 10 and set(text) == {"="}

    def __call__(self, line: str) -> str:
        """The part of `line` to print ("" for none)."""
        if self.TCP_WARNING in line:
            self.tcp_warnings += 1
            return ""
        if self.in_box:
            if self.is_border(line):
                self.in_box = False
            return ""
        if self.BOX_START in line:
            self.in_box, self.pending_border = True, None
            return ""
        held, self.pending_border = self.pending_border, None
        if self.is_border(line):
            self.pending_border = line
            return held or ""
        return (held or "") + line


def stream(cmd: list[str], env: dict) -> tuple[int, set[str]]:
    """Run `cmd`, passing its log through (less the lines `LogFilter` drops); its exit status and the names of
    the notebooks whose execution failed."""
    failed = set()
    keep = LogFilter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env) as proc:
        for line in proc.stdout:
            sys.stdout.write(keep(line))
            match = NOTEBOOK_FAILED.search(line)
            if match:
                failed.add(match.group(1))
    if keep.pending_border:
        sys.stdout.write(keep.pending_border)
    return proc.returncode, failed


def package_fingerprint() -> str:
    """sha256 over every file of the `minimoe` package this Python imports (the chapters' kernel uses the same
    environment): its modules and its data, such as the shipped checkpoint."""
    spec = importlib.util.find_spec("minimoe")
    if spec is None or not spec.submodule_search_locations:
        return "minimoe not importable"
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def drop_stale_executions(book: Path) -> None:
    """Empty the jupyter-cache when `minimoe` changed since its chapters executed: a cached chapter would show
    the old package's outputs (jupyter-cache keys a notebook on its own code only)."""
    cache_dir = book / "_build" / ".jupyter_cache"
    stamp = book / "_build" / ".minimoe.sha256"
    fingerprint = package_fingerprint()
    if cache_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != fingerprint):
        print("minimoe changed since the chapters were last executed: every chapter executes again", flush=True)
        shutil.rmtree(cache_dir)
    stamp.write_text(fingerprint + "\n")


def run_jupyter_book(book: Path) -> tuple[int, set[str]]:
    """Run `jupyter-book build BOOK -W -n --keep-going` with the jupyter-book beside this Python.

    Returns its exit status and the names of the notebooks whose execution failed (read from its log, which
    is passed through as it comes, less the lines `LogFilter` drops).
    """
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe if exe.exists() else "jupyter-book"), "build", str(book), "-W", "-n", "--keep-going"]
    print("$ " + " ".join(cmd), flush=True)
    return stream(cmd, dict(os.environ, IPYTHONDIR=str(kernel_profile(book))))


def executed_since(book: Path, since: dt.datetime) -> list[str]:
    """The chapters whose jupyter-cache record was written after `since` (naive UTC)."""
    from jupyter_cache import get_cache

    cache_dir = book / "_build" / ".jupyter_cache"
    if not cache_dir.exists():
        return []
    return sorted(Path(r.uri).stem for r in get_cache(cache_dir).list_cache_records() if r.created >= since)


def build_chinese(book: Path, allow_untranslated: bool) -> int:
    """The 繁體中文 edition into `_build/html/zh-hant`, from the English edition's executed notebooks."""
    from i18n import (
        LANGUAGE,
        PREFIX,
        catalog_problems,
        edition_build,
        prepare_locales,
        publish,
        sphinx_command,
        summarise,
    )

    print(f"\n繁體中文 edition ({LANGUAGE}) into {PREFIX}/", flush=True)
    problems = catalog_problems(book)
    prepare_locales(book)
    since = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    env = dict(os.environ, IPYTHONDIR=str(kernel_profile(book)))
    if allow_untranslated:
        env["MINIMOE_ALLOW_UNTRANSLATED"] = "1"
    returncode, _ = stream(sphinx_command(book, "html", edition_build(book), LANGUAGE), env)
    if (edition_build(book) / "index.html").exists():
        publish(book)
    again = executed_since(book, since)
    if again:
        print(f"\nThe 繁體中文 edition executed {', '.join(again)} again: its chapters must come from the "
              "English edition's jupyter-cache", file=sys.stderr)
        returncode = returncode or 1
    if problems:
        print(f"\n{len(problems)} messages of the 繁體中文 edition are untranslated or fuzzy (translate them in "
              f"these catalogs; docs/translation.md):\n{summarise(problems)}", file=sys.stderr)
        if not allow_untranslated:
            returncode = returncode or 1
    if returncode != 0:
        print(f"\nThe 繁體中文 edition FAILED (exit {returncode}).", file=sys.stderr)
    return returncode


def chapter_timings(book: Path, since: dt.datetime, failed: set[str]) -> list[tuple[str, float | None, str]]:
    """(chapter, execution seconds, "executed" | "cached" | "FAILED" | "not executed") for each chapter."""
    from jupyter_cache import get_cache

    cache_dir = book / "_build" / ".jupyter_cache"
    cache = get_cache(cache_dir) if cache_dir.exists() else None
    rows = []
    for nb in sorted((book / "chapters").glob("*.ipynb")):
        record = None
        if cache is not None:
            try:
                record = cache.match_cache_file(nb)
            except KeyError:
                record = None
        if record is None:
            rows.append((nb.stem, None, "FAILED" if nb.stem in failed else "not executed"))
            continue
        seconds = (record.data or {}).get("execution_seconds")
        state = "executed" if record.created >= since else "cached"
        rows.append((nb.stem, seconds, state))
    return rows


ARCHIVE = "minimoe-notebooks.zip"
ARCHIVE_README = """\
minimoe: DeepSeek's ideas from first principles, version {version}
====================================================================

The chapters of the course as notebooks, executed when the site was built: open them in JupyterLab, Jupyter
Notebook, a JupyterHub or Colab. Each one starts with a cell that installs the `minimoe` package when it is
missing{where}; then run the notebook top to bottom (each chapter takes a few minutes on a laptop CPU) and drag
the explorers' sliders.

With a clone of the repository, `make lab` opens the same chapters in JupyterLab instead.

Licence: MIT (LICENSE).
"""


def archive_notebook(nb, url: str):
    """An executed chapter as handed to students: the install cell first, no execution metadata."""
    import nbformat
    from repository import CELL_ID, install_cell

    nb.cells = [c for c in nb.cells if c.get("id") != CELL_ID]
    nb.cells.insert(0, nbformat.from_dict(install_cell(url)))
    for code in nb.cells:
        code.metadata.pop("execution", None)
        if code.cell_type == "code":
            code.execution_count = None
            for output in code.get("outputs", []):
                if "execution_count" in output:
                    output["execution_count"] = None
    return nb


def write_archive(book: Path, html: Path) -> Path | None:
    """`minimoe-notebooks.zip` in the site: every chapter, executed (outputs from the jupyter-cache merged into
    the current notebook), or None when a chapter has no cached execution (a failed build)."""
    import zipfile

    import nbformat
    from jupyter_cache import get_cache

    cache_dir = book / "_build" / ".jupyter_cache"
    if not cache_dir.exists() or not html.exists():
        return None
    cache = get_cache(cache_dir)
    from repository import configured_url

    url = configured_url(book / "_config.yml")
    where = f" (from {url})" if url else ""
    try:
        version = re.search(r'^version\s*=\s*"([^"]+)"', (book.parent / "pyproject.toml").read_text(),
                            re.MULTILINE).group(1)
    except (OSError, AttributeError):
        version = "unknown"
    target = html / ARCHIVE
    partial = target.with_suffix(".zip.partial")
    fixed_time = (2025, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((book / "chapters").glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            try:
                _, nb = cache.merge_match_into_notebook(nb)
            except KeyError:
                partial.unlink()
                return None
            text = nbformat.writes(archive_notebook(nb, url)) + "\n"
            archive.writestr(zipfile.ZipInfo(f"minimoe-notebooks/{path.name}", fixed_time), text)
        archive.writestr(zipfile.ZipInfo("minimoe-notebooks/README.txt", fixed_time),
                         ARCHIVE_README.format(version=version, where=where))
        licence = book.parent / "LICENSE"
        if licence.exists():
            archive.writestr(zipfile.ZipInfo("minimoe-notebooks/LICENSE", fixed_time), licence.read_text())
    partial.replace(target)
    return target


def print_report(rows: list[tuple[str, float | None, str]], wall_s: float, html: Path) -> None:
    width = max([len("chapter")] + [len(r[0]) for r in rows])
    print(f"\n{'chapter':<{width}}  {'execution':>10}  this build")
    for name, seconds, state in rows:
        shown = f"{seconds:9.1f}s" if seconds is not None else f"{'-':>10}"
        budget = LONG_CHAPTER_BUDGET_S if name in LONG_CHAPTERS else CHAPTER_BUDGET_S
        over = f"  (over the {budget} s budget)" if seconds and seconds > budget else ""
        print(f"{name:<{width}}  {shown}  {state}{over}")
    executed = sum(s for _, s, state in rows if s is not None and state == "executed")
    print(f"{'':<{width}}  {executed:9.1f}s  executed in this build, {wall_s:.0f} s wall time in all")
    core = [s for name, s, state in rows if name not in LONG_CHAPTERS and state == "executed" and s is not None]
    if len(core) == len([r for r in rows if r[0] not in LONG_CHAPTERS]) and sum(core) > CORE_BUDGET_S:
        print(f"the chapters before Part V executed in {sum(core):.0f} s, over their {CORE_BUDGET_S} s budget")
    if wall_s > BOOK_BUDGET_S:
        print(f"the build took {wall_s:.0f} s, over the {BOOK_BUDGET_S} s budget")
    print(f"\nThe site is in {html}. Open it with\n    python3 -m http.server --bind 127.0.0.1 -d {html}")
    print("and visit http://127.0.0.1:8000")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", type=Path, default=BOOK, help="the book folder (default: this script's)")
    parser.add_argument("--allow-untranslated", action="store_true",
                        help="build the 繁體中文 edition even where messages lack a translation (English stands in)")
    args = parser.parse_args(argv)
    book = args.book.resolve()
    (book / "_build").mkdir(exist_ok=True)
    with open(book / "_build" / ".build.lock", "w") as lock:
        # Two builds of one book at once would corrupt the execution cache: the second waits for the first, then
        # finds the chapters cached.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(book, args.allow_untranslated)


def build(book: Path, allow_untranslated: bool = False) -> int:
    start_wall = time.monotonic()
    # jupyter-cache stamps records in naive UTC.
    since = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    link_chapters(book)
    vendor(book)
    drop_stale_executions(book)
    returncode, failed = run_jupyter_book(book)
    html = book / "_build" / "html"
    try:
        html_shown = html.relative_to(Path.cwd())
    except ValueError:
        html_shown = html
    if returncode == 0:
        archive = write_archive(book, html)
        print(f"\nThe chapters as executed notebooks: {archive}" if archive else
              "\nNo notebook archive: a chapter has no cached execution")
        returncode = build_chinese(book, allow_untranslated)
    print_report(chapter_timings(book, since, failed), time.monotonic() - start_wall, html_shown)
    if returncode != 0:
        logs = sorted((html / "reports").glob("**/*.err.log")) if (html / "reports").exists() else []
        print(f"\nThe build FAILED (jupyter-book exit {returncode}).", file=sys.stderr)
        for log in logs:
            print(f"  cell error log: {log}", file=sys.stderr)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
