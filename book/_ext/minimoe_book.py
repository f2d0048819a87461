r"""Three fixes to the Jupyter Book 1 site, loaded from `_config.yml` (`sphinx.local_extensions`).

- Launch buttons only once the book names its repository, pointing at the notebooks themselves.
  sphinx-book-theme builds Binder/JupyterHub links from `repository.url` and fails the build when a launch
  service is configured but the URL is empty; so while the URL is empty the launch buttons are dropped, and
  they appear as soon as `repository.url` is set. Their links name `<path_to_book>/chapters/NN.ipynb`, but
  `book/chapters` is a symlink that build.py creates and git ignores, so they are pointed at `notebooks/`.
- Each script once per page. sphinx-thebe registers its inline configuration script (`const THEBE_JS_URL = …`)
  twice during a Jupyter Book build, once with filename None and once with "", so every page declared the
  constant twice and the browser logged a SyntaxError.
- Equation tags in multi-line display maths. Sphinx wraps display maths that contains `\\` in
  `\begin{split}`, where MathJax refuses `\tag` ("\tag not allowed in split environment"); JupyterLab does not
  wrap it. An unnumbered display equation that has both is passed to MathJax as written, between `\[ \]`.
"""

from urllib.parse import quote

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config


def drop_launch_buttons_without_repository(app: Sphinx, config: Config) -> None:
    theme = config.html_theme_options
    if not theme.get("repository_url"):
        theme["launch_buttons"] = {}


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


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", drop_launch_buttons_without_repository)
    app.connect("html-page-context", deduplicate_scripts, priority=900)
    app.connect("html-page-context", point_launch_links_at_notebooks, priority=900)
    app.connect("doctree-resolved", keep_tags_out_of_split)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
