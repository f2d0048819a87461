"""Two fixes to the Jupyter Book 1 site, loaded from `_config.yml` (`sphinx.local_extensions`).

- Launch buttons only once the book names its repository. sphinx-book-theme builds Binder/JupyterHub links
  from `repository.url` and fails the build when a launch service is configured but the URL is empty; so
  while the URL is empty the launch buttons are dropped, and they appear as soon as `repository.url` is set.
- Each script once per page. sphinx-thebe registers its inline configuration script (`const THEBE_JS_URL = …`)
  twice during a Jupyter Book build, once with filename None and once with "", so every page declared the
  constant twice and the browser logged a SyntaxError.
"""

from sphinx.application import Sphinx
from sphinx.config import Config


def drop_launch_buttons_without_repository(app: Sphinx, config: Config) -> None:
    theme = config.html_theme_options
    if not theme.get("repository_url"):
        theme["launch_buttons"] = {}


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


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", drop_launch_buttons_without_repository)
    app.connect("html-page-context", deduplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
