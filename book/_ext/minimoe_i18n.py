"""The site's two editions, English at the root and 繁體中文 under `zh-hant/`, built from one source.

`book/build.py` builds the English edition, then the Chinese one with `language = "zh_HK"` and the catalogs of
`book/locales` (see book/i18n.py). This extension, loaded in both builds (`_config.yml`,
`sphinx.local_extensions`), does what the Chinese edition needs beyond Sphinx's own translation of the pages:

- Interface strings from Traditional catalogs. Sphinx's zh_HK catalog is empty, sphinx-book-theme ships zh_TW,
  and pydata-sphinx-theme only `zh`, which is Simplified and which Python's gettext would pick for zh_HK. So the
  chain is: the book's own `locales/zh_HK/LC_MESSAGES/sphinx.po` (the themes' strings that Sphinx lacks, and the
  strings of `_ext/`), then Sphinx's zh_TW; the book theme's strings come from its zh_TW catalog.
- A language switch in every page's header that opens the same page in the other edition (and
  `<link rel="alternate" hreflang>` in its head).
- The build fails on an English message without a translation: every translatable node that Sphinx left
  untranslated (a message missing from the catalog, empty, or fuzzy) is reported as a warning naming the page,
  its line, the catalog and the message; the build runs with `-W`. A message translated as itself (a name, a
  formula) counts as translated. Code outputs are the code's, never translated, so they are not reported.
"""

from __future__ import annotations

import os
from gettext import translation
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

PREFIX = "zh-hant"  # the Chinese edition's folder (book/i18n.py: PREFIX)
LABELS = {"en": ("English", "en"), "zh": ("繁體中文", "zh-HK")}  # the switch's text and hreflang
TEMPLATES = Path(__file__).resolve().parent / "templates"
# Strings of the site that are not in any page: translated through the interface catalog (sphinx.po). Each is
# passed through `ui()`; tests/test_i18n.py checks that sphinx.po translates every one.
UI_MESSAGES = (
    "minimoe: DeepSeek's ideas from first principles",
    "the minimoe contributors",
    "Search this book...",
    "MIT licence",
    "How to cite",
    "Read this page in English",
    "Read this page in 繁體中文",
    "This explorer runs live in JupyterLab",
    ("Its figure redraws only when a Python kernel runs it. In this static page the controls are frozen at their "
     "first setting and the figure below is that setting's. To move them, open the chapter in JupyterLab "
     "(<code>make lab</code> in the repository), download <a href=\"{archive}\">all the chapters as "
     "notebooks</a>{launch}."),
    " or launch it with the buttons at the top of this page (Binder, Colab or your JupyterHub)",
    "Figure: {description}",
    "Figure drawn by the explorer",
    "A figure of the section “{title}”",
    "A figure drawn by the chapter's code",
)


def is_chinese(config: Config) -> bool:
    return (config.language or "en").startswith("zh")


def ui(app: Sphinx, message: str) -> str:
    """`message` in the edition's language (itself in the English edition)."""
    assert message in UI_MESSAGES, f"add {message!r} to UI_MESSAGES and to locales/*/LC_MESSAGES/sphinx.po"
    return app.translator.gettext(message)


def traditional_catalogs(app: Sphinx, config: Config) -> None:
    """Sphinx's and the themes' strings from Traditional catalogs, never from pydata-sphinx-theme's Simplified
    `zh` (which Python's gettext falls back to for zh_HK); then the title and the search box's text."""
    if not is_chinese(config):
        return
    import sphinx
    import sphinx_book_theme
    from sphinx import locale

    head = app.translator  # the book's sphinx.po (Sphinx loads locale_dirs first), used by the templates
    head._fallback = None  # drops Sphinx's empty zh_HK and pydata-sphinx-theme's Simplified zh
    head.add_fallback(translation("sphinx", Path(sphinx.__file__).parent / "locale", ["zh_TW"]))
    theme_locales = Path(sphinx_book_theme.__file__).parent / "theme" / "sphinx_book_theme" / "static" / "locales"
    locale.translators["general", "booktheme"] = translation("booktheme", theme_locales, ["zh_TW"])
    config.html_title = ui(app, config.html_title)
    config.author = ui(app, config.author)
    options = config.html_theme_options
    options["search_bar_text"] = ui(app, options.get("search_bar_text") or "Search this book...")


def add_switch_template(app: Sphinx, config: Config) -> None:
    config.templates_path = [*config.templates_path, str(TEMPLATES)]
    options = config.html_theme_options
    options["article_header_end"] = ["minimoe-language-switch.html"]  # it includes the theme's buttons


def language_switch(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """The same page in the other edition: `zh-hant/<page>.html` from an English page, `../<page>.html` back."""
    up = "../" * pagename.count("/")
    if is_chinese(app.config):
        href, (label, lang) = f"{up}../{pagename}.html", LABELS["en"]
        title = ui(app, "Read this page in English")
    else:
        href, (label, lang) = f"{up}{PREFIX}/{pagename}.html", LABELS["zh"]
        title = ui(app, "Read this page in 繁體中文")
    context["minimoe_switch"] = {"href": href, "label": label, "lang": lang, "title": title}
    context["metatags"] = context.get("metatags", "") + f'\n<link rel="alternate" hreflang="{lang}" href="{href}" />'


# ------------------------------------------------------------------------------- untranslated messages


def in_code_output(node: nodes.Node) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.container) and "cell_output" in parent.get("classes", []):
            return True
        parent = parent.parent
    return False


def translate_toc_captions(app: Sphinx, doctree: nodes.document) -> list[tuple[int, str]]:
    """The part captions of the site's toctrees ("Part I: Attention"), which sphinx-external-toc inserts after
    Sphinx's translation transform has run; returns those the page's catalog lacks."""
    from sphinx.locale import init as catalog_for
    from sphinx.util.i18n import docname_to_domain

    toctrees = [t for t in doctree.findall(addnodes.toctree) if t.get("caption")]
    if not toctrees:
        return []
    dirs = [str(Path(app.srcdir, d)) for d in app.config.locale_dirs]
    domain = docname_to_domain(app.env.docname, app.config.gettext_compact)
    catalog, _ = catalog_for(dirs, app.config.language, domain)
    missing = []
    for toctree in toctrees:
        translated = catalog.gettext(toctree["caption"])
        if translated == toctree["caption"]:
            missing.append((toctree.line or 0, toctree["caption"]))
        toctree["caption"] = translated
    return missing


def has_catalog(app: Sphinx) -> bool:
    """Whether the page being read has a catalog (Sphinx's Locale transform skips a page without one, marking
    nothing: a new chapter nobody has run `make translations` for)."""
    from sphinx.locale import init as catalog_for
    from sphinx.util.i18n import docname_to_domain

    dirs = [str(Path(app.srcdir, d)) for d in app.config.locale_dirs]
    domain = docname_to_domain(app.env.docname, app.config.gettext_compact)
    return catalog_for(dirs, app.config.language, domain)[1]


def glossary_name(node: nodes.Node) -> bool:
    """A name line of a glossary entry: the name links use, kept as it is in both editions (its English names
    are not extracted as messages once book/_ext/minimoe_book.py joins them onto one line)."""
    return isinstance(node, nodes.term) and any(isinstance(a, addnodes.glossary) for a in ancestors(node))


def ancestors(node: nodes.Node):
    while node.parent is not None:
        node = node.parent
        yield node


def record_untranslated(app: Sphinx, doctree: nodes.document) -> None:
    if not is_chinese(app.config):
        return
    found = translate_toc_captions(app, doctree)
    if has_catalog(app):
        untranslated = (node for node in doctree.findall(nodes.Element) if node.get("translated") is False)
    else:
        from sphinx.util.nodes import extract_messages

        untranslated = (node for node, _ in extract_messages(doctree))
    for node in untranslated:
        if not in_code_output(node) and not glossary_name(node):
            text = (node.get("rawsource") or getattr(node, "rawsource", "") or node.astext()).strip()
            found.append((node.line or 0, " ".join(text.split())))
    untranslated = getattr(app.env, "minimoe_untranslated", {})
    untranslated[app.env.docname] = found
    app.env.minimoe_untranslated = untranslated


def purge(app: Sphinx, env, docname: str) -> None:
    getattr(env, "minimoe_untranslated", {}).pop(docname, None)


def merge(app: Sphinx, env, docnames, other) -> None:
    mine = getattr(env, "minimoe_untranslated", {})
    mine.update({d: v for d, v in getattr(other, "minimoe_untranslated", {}).items() if d in docnames})
    env.minimoe_untranslated = mine


def where(env, docname: str, line: int) -> str:
    """"line 12", or for a notebook "cell 3, line 2" (myst-nb numbers a notebook's lines cell * 10000 + line)."""
    if str(env.doc2path(docname)).endswith(".ipynb") and line >= 10_000:
        return f"cell {line // 10_000}, line {line % 10_000}"
    return f"line {line}"


def report_untranslated(app: Sphinx, env) -> None:
    """One warning per page with untranslated messages, on every build (cached pages too); a line of the log
    instead under `build.py --allow-untranslated`."""
    report = logger.info if os.environ.get("MINIMOE_ALLOW_UNTRANSLATED") else logger.warning
    locales = app.config.locale_dirs[0] if app.config.locale_dirs else "locales"
    for docname, found in sorted(getattr(env, "minimoe_untranslated", {}).items()):
        if not found or docname not in env.found_docs:
            continue
        shown = "; ".join(f"{where(env, docname, line)}: {text[:80]!r}" for line, text in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        report(
            f"{len(found)} messages have no translation in {Path(locales).name}/{app.config.language}/"
            f"LC_MESSAGES/{docname}.po (run `make translations`, then translate them): {shown}{more}",
            location=(docname, found[0][0]), type="minimoe", subtype="untranslated",
        )


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", add_switch_template)
    app.connect("config-inited", traditional_catalogs)
    app.connect("html-page-context", language_switch)
    app.connect("doctree-read", record_untranslated)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.connect("env-check-consistency", report_untranslated)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
