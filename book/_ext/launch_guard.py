"""Show launch buttons only once the book names its repository.

sphinx-book-theme builds Binder/JupyterHub links from `repository.url` in `_config.yml` and fails the build when
a launch service is configured but the URL is empty. This extension drops the launch buttons while the URL is
empty, so `_config.yml` can keep `launch_buttons` filled in and they appear as soon as `repository.url` is set.
"""

from sphinx.application import Sphinx
from sphinx.config import Config


def drop_launch_buttons_without_repository(app: Sphinx, config: Config) -> None:
    theme = config.html_theme_options
    if not theme.get("repository_url"):
        theme["launch_buttons"] = {}


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", drop_launch_buttons_without_repository)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
