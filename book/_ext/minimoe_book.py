r"""Three fixes to the Jupyter Book 1 site, loaded from `_config.yml` (`sphinx.local_extensions`).

- Launch buttons only once the book names its repository, pointing at the notebooks themselves.
  sphinx-book-theme builds Binder/JupyterHub links from `repository.url` and fails the build when a launch
  service is configured but the URL is empty; so while the URL is empty the launch buttons are dropped, and
  they appear as soon as `repository.url` is set. Their links name `<path_to_book>/chapters/NN.ipynb`, but
  `book/chapters` is a symlink that build.py creates and git ignores, so they are pointed at `notebooks/`.
- Each script once per page. sphinx-thebe registers its inline configuration script (`const THEBE_JS_URL = …`)
  twice during a Jupyter Book build, once with filename None and once with "", so every page declared the
  constant twice and the browser logged a SyntaxError.
- Glossary terms on one line. A `{glossary}` entry lists each of its names (English, its abbreviation, 繁體中文)
  on a line of its own, so that `{term}` can link to any of them; Sphinx draws each as its own `<dt>`, which put
  the Chinese term on a line below the English one. The names of an entry are joined into one `<dt>`, separated
  by " · ", each keeping its link target (a `<span>` around the name, with the name's id).
- Equation tags in multi-line display maths. Sphinx wraps display maths that contains `\\` in
  `\begin{split}`, where MathJax refuses `\tag` ("\tag not allowed in split environment"); JupyterLab does not
  wrap it. An unnumbered display equation that has both is passed to MathJax as written, between `\[ \]`.

And the build itself: the chapters execute in the Sphinx process, through jupyter_client channels whose waits
`minimoe._kernel_client` makes immune to a lost wake-up (a cell would otherwise stall for the whole cell timeout).

And what makes the site publishable:

- The version (from pyproject.toml) on every page's footer, with the licence and a link to "How to cite"; the
  repository button whenever `repository.url` is set (the one place a lecturer names the repository).
- `site.js` / `site.css` (book/_site/_static/minimoe): the sidebar buttons on phones, tablets and wide screens
  (pydata-sphinx-theme #2451), figures scaled to the column that open full size on a click, long inline code
  that wraps on a phone.
- Figures' alt text says what they show: the kernels of the build record a `Description` in each PNG
  (`_ext/kernel_startup.py`) and it becomes the image's alt text.
- Explorers: the book has no Python behind it, so an explorer's controls cannot redraw anything. Each one is
  preceded by a note saying so, with a link to the notebooks, and its controls are shown disabled. Markdown
  printed inside an explorer is stored as HTML too, since the widget manager does not render Markdown.
- Citations: author-year labels with a/b for one author's papers of one year ("DeepSeek-AI 2024a"), the same in
  the text and in the bibliography, and each entry's link once (its arXiv number, else its URL, else its DOI).
"""

import base64
import html
import json
import re
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle as AuthorYearTitleSorting
from pybtex.style.template import field, href, join, optional, sentence
from sphinx.application import Sphinx
from sphinx.config import Config

if str(Path(__file__).resolve().parent) not in sys.path:  # tests load this file on its own
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from minimoe_i18n import ui  # the 繁體中文 edition's interface strings; beside this file)

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = "minimoe-notebooks.zip"  # written next to index.html by book/build.py
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CONTROL_MODELS = re.compile(r"(Slider|Dropdown|ToggleButtons|Checkbox|Button|Text|Select|RadioButtons|Play)Model$")


def package_version() -> str:
    """minimoe's version: `project.version` in pyproject.toml, else the installed package's."""
    pyproject = REPO / "pyproject.toml"
    if pyproject.exists():
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
        if match:
            return match.group(1)
    from importlib.metadata import version

    return version("minimoe")


def drop_launch_buttons_without_repository(app: Sphinx, config: Config) -> None:
    """Launch and repository buttons only when `repository.url` names the repository."""
    theme = config.html_theme_options
    if not theme.get("repository_url"):
        theme["launch_buttons"] = {}
        for button in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
            theme[button] = False
    else:
        theme["use_repository_button"] = True


def set_version(app: Sphinx, config: Config) -> None:
    """The package version as Sphinx's `version`/`release` and as the MyST substitution `{{ version }}`."""
    version = package_version()
    config.version = config.release = version
    substitutions = dict(getattr(config, "myst_substitutions", None) or {})
    substitutions.setdefault("version", version)
    config.myst_substitutions = substitutions


def footer_with_version(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Every page's footer: the version, the licence and where to find how to cite the course."""
    pathto = context.get("pathto")
    cite = pathto("intro") + "#how-to-cite" if pathto else "#"
    extra = context.get("theme_extra_footer") or ""
    context["theme_extra_footer"] = (
        f'{extra}<p class="minimoe-version">minimoe {html.escape(app.config.release)} · {ui(app, "MIT licence")} · '
        f'<a href="{cite}">{ui(app, "How to cite")}</a></p>'
    )


def point_launch_links_at_notebooks(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree
) -> None:
    book = app.config.html_theme_options.get("path_to_docs", "").strip("/")
    chapters = f"{book}/chapters/" if book else "chapters/"
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            url = button.get("url")
            if isinstance(url, str):
                url = url.replace(chapters, "notebooks/")
                button["url"] = url.replace(quote(chapters, safe=""), "notebooks%2F")


def deduplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        # An inline script is registered once with filename None and once with "": the same script.
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def keep_tags_out_of_split(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    opening, closing = app.config.mathjax_display
    for node in doctree.findall(nodes.math_block):
        latex = node.astext()
        if node.get("nowrap") or node.get("number") or "\n\n" in latex:
            continue
        if r"\tag" in latex and r"\\" in latex:
            node[:] = [nodes.Text(f"{opening}{latex}{closing}")]
            node["nowrap"] = True


# ------------------------------------------------------------------------------------------- glossary

GLOSSARY_SEPARATOR = " · "


def glossary_terms_on_one_line(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Join the names of each glossary entry (one `term` node per name) into its first term node.

    The first name keeps its `<dt>` id and permalink; every other name moves, with its index entry, into a
    `<span class="minimoe-term-name">` that carries its id, so that links to it still land on the entry and the
    search page, which quotes the text at a result's anchor, finds the name there.
    """
    from sphinx import addnodes

    for glossary in doctree.findall(addnodes.glossary):
        for item in glossary.findall(nodes.definition_list_item):
            terms = [child for child in item.children if isinstance(child, nodes.term)]
            first, others = terms[0] if terms else None, terms[1:]
            for term in others:
                first += nodes.Text(GLOSSARY_SEPARATOR)
                first += nodes.inline("", "", *term.children, ids=list(term["ids"]), classes=["minimoe-term-name"])
                item.remove(term)


# ------------------------------------------------------------------------------------------- figures


def png_description(path: Path | bytes) -> str | None:
    """The `Description` text chunk of a PNG file or of PNG bytes (tEXt, zTXt or iTXt), or None."""
    try:
        data = path if isinstance(path, bytes) else path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            if key == b"Description":
                return text.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            if key == b"Description":
                return zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            if key == b"Description":
                compressed, rest = rest[0], rest[2:]
                _, _, rest = rest.partition(b"\0")  # language tag
                _, _, text = rest.partition(b"\0")  # translated keyword
                return (zlib.decompress(text) if compressed else text).decode("utf-8")
        elif kind == b"IEND":
            break
    return None


def section_title(node: nodes.Node) -> str:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.section) and parent.children and isinstance(parent[0], nodes.title):
            return parent[0].astext()
        parent = parent.parent
    return ""


def describe_figures(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Alt text for each cell-output image: what it shows (see kernel_startup.py), not its file name."""
    for image in doctree.findall(nodes.image):
        alt = image.get("alt", "")
        uri = image.get("uri", "")
        if alt and not alt.endswith(Path(uri).name) and "/" not in alt:
            continue
        path = Path(uri.lstrip("/")) if Path(uri).is_absolute() else Path(uri)
        candidates = [Path(app.srcdir) / path, Path(app.srcdir) / Path(docname).parent / path, Path(uri)]
        description = next((d for d in map(png_description, candidates) if d), None)
        if description:
            image["alt"] = ui(app, "Figure: {description}").format(description=description)
        else:
            title = section_title(image)
            image["alt"] = (ui(app, "A figure of the section “{title}”").format(title=title) if title
                            else ui(app, "A figure drawn by the chapter's code"))


# ------------------------------------------------------------------------------------------- explorers


def live_note(app: Sphinx, docname: str, launchable: bool) -> nodes.raw:
    # The one notebooks archive sits at the site's root, above the 繁體中文 edition's folder.
    up = "../" * (docname.count("/") + (1 if (app.config.language or "en").startswith("zh") else 0))
    launch = (ui(app, " or launch it with the buttons at the top of this page (Binder, Colab or your JupyterHub)")
              if launchable else "")
    body = ui(app, "Its figure redraws only when a Python kernel runs it. In this static page the controls are "
                   "frozen at their first setting and the figure below is that setting's. To move them, open the "
                   "chapter in JupyterLab (<code>make lab</code> in the repository), download <a href=\"{archive}\">"
                   "all the chapters as notebooks</a>{launch}.")
    text = (
        '<div class="admonition note minimoe-live-note" role="note">'
        f'<p class="admonition-title">{ui(app, "This explorer runs live in JupyterLab")}</p>'
        f"<p>{body.format(archive=up + ARCHIVE, launch=launch)}</p></div>"
    )
    return nodes.raw("", text, format="html")


def note_live_explorers(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Put a "runs live in JupyterLab" note before every widget output of a page."""
    launchable = bool(app.config.html_theme_options.get("launch_buttons"))
    for raw in list(doctree.findall(nodes.raw)):
        if WIDGET_VIEW not in raw.astext() or "minimoe-live-note" in raw.astext():
            continue
        anchor = raw
        while anchor.parent is not None and not (
            isinstance(anchor.parent, nodes.container) and "cell" in anchor.parent.get("classes", [])
        ):
            anchor = anchor.parent
        if anchor.parent is None:
            anchor = raw
        anchor.parent.insert(anchor.parent.index(anchor), live_note(app, docname, launchable))


def markdown_to_html(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(text)


def freeze_widget_state(state: dict, translate=lambda message: message) -> dict:
    """Controls disabled (nothing behind them in a static page); Markdown outputs given an HTML twin."""
    for model in state.get("state", {}).values():
        name, values = model.get("model_name", ""), model.get("state", {})
        if CONTROL_MODELS.search(name) and "disabled" in values:
            values["disabled"] = True
        for output in values.get("outputs", []) if name == "OutputModel" else []:
            data = output.get("data", {})
            if "text/markdown" in data and "text/html" not in data:
                markdown = data["text/markdown"]
                data["text/html"] = markdown_to_html("".join(markdown) if isinstance(markdown, list) else markdown)
            elif "image/png" in data and "text/html" not in data:
                # The widget manager draws a PNG with no alt text; an HTML twin carries the figure's description.
                png = "".join(data["image/png"]) if isinstance(data["image/png"], list) else data["image/png"]
                png = png.replace("\n", "")
                try:
                    description = png_description(base64.b64decode(png))
                except ValueError:
                    description = None
                alt = html.escape(translate("Figure: {description}").format(description=description) if description
                                  else translate("Figure drawn by the explorer"))
                data["text/html"] = f'<img src="data:image/png;base64,{png}" alt="{alt}" />'
    return state


def freeze_widgets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    for script in context.get("script_files") or []:
        attributes = getattr(script, "attributes", {})
        if attributes.get("type") != WIDGET_STATE or not attributes.get("body"):
            continue
        state = freeze_widget_state(json.loads(attributes["body"]), lambda message: ui(app, message))
        attributes["body"] = json.dumps(state).replace("</", "<\\/")


# ------------------------------------------------------------------------------------------- citations


def plain_name(latex: str) -> str:
    return Text.from_latex(latex).render_as("text").replace("{", "").replace("}", "")


class AuthorYearLabels(BaseLabelStyle):
    """"DeepSeek-AI 2024a", "Shao et al. 2024", "Ainslie and Lee 2023": author-year, with a letter when one
    author has several entries in one year (in the bibliography's order)."""

    def base(self, entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [plain_name(" ".join(p.last_names) or " ".join(p.first_names)) for p in persons]
        year = entry.fields.get("year", "n.d.")
        if not names:
            return f"{plain_name(entry.fields.get('title', entry.key)).split()[0]} {year}"
        if len(names) == 1:
            return f"{names[0]} {year}"
        if len(names) == 2 and names[1].lower() != "others":
            return f"{names[0]} and {names[1]} {year}"
        return f"{names[0]} et al. {year}"

    def format_labels(self, sorted_entries):
        bases = [self.base(entry) for entry in sorted_entries]
        counts, seen = Counter(bases), Counter()
        for base in bases:
            if counts[base] == 1:
                yield base
            else:
                yield base + "abcdefghijklmnopqrstuvwxyz"[seen[base]]
                seen[base] += 1


class AuthorYearSorting(AuthorYearTitleSorting):
    """Author, year, title, with the braces that protect a corporate author ({DeepSeek-AI}) ignored."""

    def sorting_key(self, entry):
        author, year, title = super().sorting_key(entry)
        return author.replace("{", "").replace("}", "").lower(), year, title


class OneLinkStyle(PlainStyle):
    """pybtex's plain style with author-year labels and one link per entry: the arXiv number (linked to the
    entry's URL), else the URL, else the DOI."""

    default_label_style = "minimoe_author_year"
    default_sorting_style = "minimoe_author_year_title"

    def format_web_refs(self, e):
        fields = e.fields
        if fields.get("eprint"):
            target = fields.get("url") or f"https://arxiv.org/abs/{fields['eprint']}"
            return sentence[href(target)[join["arXiv:", field("eprint", raw=True)]]]
        if fields.get("url"):
            return sentence[optional[self.format_url(e)]]
        return sentence[optional[self.format_doi(e)]]


register_plugin("pybtex.style.labels", "minimoe_author_year", AuthorYearLabels, force=True)
register_plugin("pybtex.style.sorting", "minimoe_author_year_title", AuthorYearSorting, force=True)
register_plugin("pybtex.style.formatting", "minimoe", OneLinkStyle, force=True)


def setup(app: Sphinx) -> dict:
    # The chapters execute in this process (myst-nb through jupyter-cache): no cell waits out its timeout.
    from minimoe import _kernel_client

    _kernel_client.install()
    app.connect("config-inited", drop_launch_buttons_without_repository)
    app.connect("config-inited", set_version)
    app.connect("html-page-context", deduplicate_scripts, priority=900)
    app.connect("html-page-context", point_launch_links_at_notebooks, priority=900)
    app.connect("html-page-context", freeze_widgets, priority=900)
    app.connect("html-page-context", footer_with_version, priority=900)
    app.connect("doctree-resolved", keep_tags_out_of_split)
    app.connect("doctree-resolved", glossary_terms_on_one_line)
    app.connect("doctree-resolved", describe_figures)
    app.connect("doctree-resolved", note_live_explorers)
    app.add_js_file("minimoe/site.js")
    app.add_css_file("minimoe/site.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
