"""The 繁體中文 edition: one source (the English pages and chapters), gettext catalogs for the Chinese text.

The prose of every page and chapter (markdown cells, admonitions, captions, alt text, tables written in markdown)
is extracted by Sphinx's gettext builder into message templates, one per page, and translated in
`book/locales/zh_HK/LC_MESSAGES/<page>.po` (chapters under `chapters/`). Code cells and their outputs are shared
with the English edition: the Chinese build reads the executed notebooks from the same jupyter-cache and never
runs a cell. `sphinx.po` in the same folder holds the site's own interface strings (the theme's and those of
`_ext/`), which no page contains.

Commands (docs/translation.md tells a contributor when to run which):

    python book/i18n.py translations   # `make translations`: re-extract the English, update the catalogs
                                       # (new messages empty, changed ones fuzzy), then report what is left
    python book/i18n.py check          # report untranslated and fuzzy messages; exit 1 when there are any

`book/build.py` builds the edition with `sphinx(...)` below, through Jupyter Book's own Sphinx entry point: its
command line passes no `language` to Sphinx (jupyter-book #1791), its Python API does.
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BOOK = Path(__file__).resolve().parent
LANGUAGE = "zh_HK"  # Sphinx's language: <html lang="zh-HK">, Sphinx's zh search
PREFIX = "zh-hant"  # the edition's folder in the site
LOCALES = "locales"  # Sphinx's default locale_dirs, relative to the book
UI_DOMAIN = "sphinx"  # the catalog of interface strings (Sphinx's own domain name, so Sphinx loads it first)
# A jieba user dictionary entry's frequency for the glossary's terms: high enough that a term is never cut up.
TERM_FREQUENCY = 200_000
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def catalogs(book: Path = BOOK) -> Path:
    return book / LOCALES / LANGUAGE / "LC_MESSAGES"


# ------------------------------------------------------------------------------------------ running Sphinx


def sphinx_overrides(book: Path, builder: str, language: str | None) -> dict:
    """Sphinx settings on top of `_config.yml` for one build of the book (what `jupyter-book build -n` passes,
    plus the edition's language)."""
    build = book / "_build"
    overrides = {
        "nitpicky": True,
        "external_toc_path": (book / "_toc.yml").as_posix(),
        "latex_individualpages": False,
        "nb_execution_cache_path": str(build / ".jupyter_cache"),
    }
    if builder == "gettext":
        # The messages are the English text as written: no outputs (they are the code's, never translated).
        overrides["nb_execution_mode"] = "off"
    if language:
        overrides["language"] = language
        # The catalogs are compiled into _build (Sphinx writes each .mo beside its .po), never into the sources.
        overrides["locale_dirs"] = [str(build / "locales")]
        overrides["html_search_options"] = {"dict": str(build / "search-dictionary.txt")}
    return overrides


def sphinx(book: Path, builder: str, outdir: Path, language: str | None) -> int:
    """Build the book with Sphinx in this process (run it in a subprocess of its own: docutils keeps globals)."""
    from jupyter_book.sphinx import build_sphinx

    suffix = f"{builder}-{language}" if language else builder
    result = build_sphinx(
        str(book), str(outdir), noconfig=True, path_config=str(book / "_config.yml"),
        confoverrides=sphinx_overrides(book, builder, language), builder=builder,
        doctreedir=str(book / "_build" / f".doctrees-{suffix}"), warningiserror=True, keep_going=True,
    )
    return result if isinstance(result, int) else 1


def sphinx_command(book: Path, builder: str, outdir: Path, language: str | None) -> list[str]:
    """The command line that runs `sphinx(...)` in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "sphinx", "--book", str(book), "--builder", builder,
           "--out", str(outdir)]
    return cmd + (["--language", language] if language else [])


def edition_build(book: Path) -> Path:
    """Where Sphinx builds the edition. Not inside the English site: myst-nb writes cell outputs into the output
    folder's parent (`jupyter_execute`), so build.py copies the finished pages into `_build/html/zh-hant`."""
    return book / "_build" / LANGUAGE / "html"


def publish(book: Path) -> Path:
    """Copy the edition's pages into the site, under PREFIX."""
    target = book / "_build" / "html" / PREFIX
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(edition_build(book), target)
    return target


def prepare_locales(book: Path) -> None:
    """Copy the catalogs into `_build/locales` (Sphinx compiles them there) and write the search dictionary."""
    target = book / "_build" / "locales"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(book / LOCALES, target, ignore=shutil.ignore_patterns("*.mo"))
    write_search_dictionary(book, book / "_build" / "search-dictionary.txt")


# ------------------------------------------------------------------------------------------ the glossary


@dataclass(frozen=True)
class Term:
    english: tuple[str, ...]  # every English name of the entry ("MLA", "Multi-head Latent Attention")
    chinese: tuple[str, ...]  # its 繁體中文 names ("多頭潛在注意力"); empty when the term stays in English


def glossary(book: Path = BOOK) -> list[Term]:
    """The entries of `glossary.md`: the one list of terms and their 繁體中文 translations."""
    text = (book / "glossary.md").read_text(encoding="utf-8")
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.DOTALL).group(1)
    entries, names = [], []
    for line in block.splitlines():
        if not line.strip() or line.startswith(":"):
            continue
        if line.startswith((" ", "\t")):
            if names:
                entries.append(names)
                names = []
            continue
        names.append(line.strip())
    if names:
        entries.append(names)
    return [Term(tuple(n for n in names if not CJK.search(n)), tuple(n for n in names if CJK.search(n)))
            for names in entries]


def write_search_dictionary(book: Path, path: Path) -> Path:
    """A jieba user dictionary for Sphinx's Chinese search (`html_search_options['dict']`).

    jieba's own dictionary is Simplified: 專家 or 潛在 are not words in it, so it would cut Traditional text into
    single characters and a search for 專家 would find nothing. The dictionary written here holds jieba's words
    converted to Traditional characters with OpenCC (its standard forms, which the translations write) (those that change) and the glossary's Chinese
    terms, each kept whole (`cut_for_search` still indexes their shorter words too, so 注意力 finds 多頭潛在注意力).
    """
    import jieba
    import opencc

    source = Path(jieba.__file__).parent / jieba.DEFAULT_DICT_NAME
    simplified = source.read_text(encoding="utf-8").splitlines()
    converted = opencc.OpenCC("s2t").convert("\n".join(simplified)).splitlines()
    lines = [new for old, new in zip(simplified, converted, strict=True) if old.split(" ")[0] != new.split(" ")[0]]
    for term in glossary(book):
        lines += [f"{name.replace(' ', '')} {TERM_FREQUENCY} n" for name in term.chinese]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ Traditional only


# Characters that every OpenCC Traditional standard converts, yet which are Traditional in the sense the
# translations use them (reviewed): 里 (the unit of distance, 公里), 干 (若干, 干擾).
TRADITIONAL_TOO = set("里干")


def simplified_only(text: str) -> set[str]:
    """The characters of `text` that no Traditional standard of OpenCC keeps: OpenCC's own (s2t), Hong Kong's
    (s2hk) and Taiwan's (s2tw) each convert them. (One standard alone flags variants: s2t writes 羣 for 群, s2hk
    閲 for 閱.)"""
    return {char for char in set(text) if CJK.match(char) and char not in TRADITIONAL_TOO
            and all(standard.convert(char) != char for standard in traditional_standards())}


@functools.cache
def traditional_standards():
    import opencc

    return [opencc.OpenCC(config) for config in ("s2t", "s2hk", "s2tw")]


# ------------------------------------------------------------------------------------------ the catalogs


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    kind: str  # "untranslated" | "fuzzy"
    message: str

    def __str__(self) -> str:
        short = self.message if len(self.message) <= 100 else self.message[:97] + "..."
        return f"{self.path}:{self.line}: {self.kind}: {short!r}"


def read_catalog(path: Path):
    from babel.messages.pofile import read_po

    with open(path, "rb") as handle:
        return read_po(handle, abort_invalid=True)


def catalog_problems(book: Path = BOOK) -> list[Problem]:
    """Every untranslated or fuzzy message of the edition's catalogs (what `msgfmt --statistics` counts)."""
    problems = []
    root = catalogs(book)
    for path in sorted(root.rglob("*.po")):
        for message in read_catalog(path):
            if not message.id:
                continue  # the header
            shown = path.relative_to(book.parent) if path.is_relative_to(book.parent) else path
            text = message.id if isinstance(message.id, str) else message.id[0]
            line = message.lineno or 0
            if message.fuzzy:
                problems.append(Problem(shown, line, "fuzzy", text))
            elif not (message.string if isinstance(message.string, str) else all(message.string)):
                problems.append(Problem(shown, line, "untranslated", text))
    return problems


def summarise(problems: list[Problem], limit: int = 40) -> str:
    """Per catalog: how many messages are untranslated or fuzzy, then the first `limit` of them."""
    from collections import Counter

    counts = Counter((p.path, p.kind) for p in problems)
    files = sorted({p.path for p in problems})
    lines = [f"  {f}: " + ", ".join(f"{counts[f, k]} {k}" for k in ("untranslated", "fuzzy") if counts[f, k])
             for f in files]
    lines += [f"    {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"    … and {len(problems) - limit} more (python book/i18n.py check lists them all)")
    return "\n".join(lines)


def extract(book: Path) -> Path:
    """Sphinx's gettext builder over the English sources: one .pot per page in `_build/gettext`."""
    pot = book / "_build" / "gettext"
    if pot.exists():
        shutil.rmtree(pot)  # a page that was removed must not keep its template
    result = subprocess.run(sphinx_command(book, "gettext", pot, None), check=False)
    if result.returncode != 0:
        raise SystemExit(f"extracting the messages failed (exit {result.returncode})")
    return pot


def update(book: Path, pot: Path) -> None:
    """`sphinx-intl update`: new messages empty, changed ones fuzzy (with the old translation to start from),
    removed ones dropped; then catalogs whose page no longer exists are deleted."""
    exe = Path(sys.executable).parent / "sphinx-intl"
    subprocess.run([str(exe if exe.exists() else "sphinx-intl"), "update", "-p", str(pot), "-l", LANGUAGE,
                    "-d", str(book / LOCALES), "-w", "0"], check=True)
    pages = {p.relative_to(pot).with_suffix("") for p in pot.rglob("*.pot")}
    for po in catalogs(book).rglob("*.po"):
        name = po.relative_to(catalogs(book)).with_suffix("")
        if name not in pages and str(name) != UI_DOMAIN:
            print(f"removing {po}: its page is gone")
            po.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("translations", help="re-extract the English and update the catalogs (make translations)")
    sub.add_parser("check", help="list untranslated and fuzzy messages; exit 1 when there are any")
    run = sub.add_parser("sphinx", help="one Sphinx build of the book (used by build.py)")
    run.add_argument("--builder", required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--language")
    for p in sub.choices.values():
        p.add_argument("--book", type=Path, default=BOOK)
    args = parser.parse_args(argv)
    book = args.book.resolve()
    if args.command == "sphinx":
        return sphinx(book, args.builder, args.out, args.language)
    if args.command == "translations":
        from build import link_chapters, vendor

        (book / "_build").mkdir(exist_ok=True)
        link_chapters(book)
        vendor(book)  # the configuration names the vendored scripts; a missing folder is a warning, and -W fails
        update(book, extract(book))
    problems = catalog_problems(book)
    if problems:
        print(f"\n{len(problems)} messages of the 繁體中文 edition need a translation:\n{summarise(problems)}")
        return 1 if args.command == "check" else 0
    print("every message of the 繁體中文 edition is translated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
