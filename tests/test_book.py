"""The course site: book sources (fast), the offline build (slow) and the built site in chromium (browser).

The slow tests run `book/build.py`, which executes only the chapters whose code changed since the last build
(jupyter-cache), so after one `make book` they take about a minute.
"""

from __future__ import annotations

import fnmatch
import functools
import http.server
import importlib.util
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from _browser import REPO, PageWatch, launch, screenshot_path, sync_playwright

BOOK = REPO / "book"
NOTEBOOKS = REPO / "notebooks"
HTML = BOOK / "_build" / "html"
TITLE = "minimoe: DeepSeek's ideas from first principles"

REQUIRED_BIB = {
    "deepseekv2": "2405.04434", "deepseekv3": "2412.19437", "deepseekr1": "2501.12948",
    "deepseekmath": "2402.03300", "dapo": "2503.14476", "drgrpo": "2503.20783", "gshard": "2006.16668",
    "switch": "2101.03961", "vaswani2017attention": "1706.03762", "shazeer2019mqa": "1911.02150",
    "ainslie2023gqa": "2305.13245", "su2021roformer": "2104.09864", "peng2023yarn": "2309.00071",
    "schulman2017ppo": "1707.06347", "dai2024deepseekmoe": "2401.06066",
}
REQUIRED_TERMS = [
    "MLA", "多頭潛在注意力", "MoE", "混合專家", "GRPO", "群組相對策略優化", "KV cache", "鍵值快取", "RoPE",
    "旋轉位置編碼", "load balancing", "負載平衡", "shared expert", "共享專家", "routed expert", "路由專家",
    "auxiliary loss", "輔助損失", "reinforcement learning", "強化學習", "verifiable reward", "可驗證獎勵",
]


def chapter_stems() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def toc_globs() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [c["glob"] for part in toc["parts"] for c in part["chapters"] if "glob" in c]


def glossary_terms() -> set[str]:
    block = re.search(r"```\{glossary\}\n(.*?)\n```", (BOOK / "glossary.md").read_text(), re.DOTALL).group(1)
    return {line.strip() for line in block.splitlines() if line.strip() and not line.startswith((" ", ":"))}


# ---------------------------------------------------------------------------------------------- book sources


def test_every_chapter_notebook_is_matched_by_one_toc_glob():
    globs = toc_globs()
    for stem in chapter_stems():
        matches = [g for g in globs if fnmatch.fnmatchcase(f"chapters/{stem}", g)]
        assert len(matches) == 1, f"notebooks/{stem}.ipynb is matched by {matches} in book/_toc.yml"


def test_chapters_come_from_notebooks_through_a_symlink():
    link = BOOK / "chapters"
    if not link.is_symlink():
        pytest.skip("book/chapters is created by book/build.py")
    assert link.resolve() == NOTEBOOKS.resolve()


def test_references_hold_every_required_paper():
    from pybtex.database import parse_file

    entries = parse_file(str(BOOK / "references.bib")).entries
    for key, arxiv in REQUIRED_BIB.items():
        assert key in entries, f"references.bib lacks {key}"
        fields = entries[key].fields
        assert arxiv in fields.get("eprint", "") + fields.get("url", ""), f"{key} should cite arXiv {arxiv}"


def test_glossary_has_english_and_chinese_terms():
    terms = glossary_terms()
    missing = [t for t in REQUIRED_TERMS if t not in terms]
    assert not missing, f"glossary.md lacks {missing}"


def test_config_keeps_the_site_offline_and_fails_on_cell_errors():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    sphinx = config["sphinx"]["config"]
    assert config["title"] == TITLE
    assert config["execute"]["execute_notebooks"] == "cache"
    assert sphinx["nb_execution_raise_on_error"] is True
    local = [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]
    assert not [u for u in local if "://" in u], f"a script is loaded from outside the site: {local}"


def book_extension():
    spec = importlib.util.spec_from_file_location("minimoe_book", BOOK / "_ext" / "minimoe_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("url, shown", [("", False), ("https://github.com/owner/minimoe", True)])
def test_launch_buttons_appear_only_with_a_repository_url(url, shown):
    config = SimpleNamespace(
        html_theme_options={
            "repository_url": url,
            "launch_buttons": {"binderhub_url": "https://mybinder.org"},
        }
    )
    book_extension().drop_launch_buttons_without_repository(None, config)
    assert bool(config.html_theme_options["launch_buttons"]) is shown


def test_launch_links_open_the_notebooks_folder_not_the_ignored_symlink():
    app = SimpleNamespace(config=SimpleNamespace(html_theme_options={"path_to_docs": "book"}))
    binder = "https://mybinder.org/v2/gh/o/minimoe/main?urlpath=lab/tree/book/chapters/00_x.ipynb"
    colab = "https://colab.research.google.com/github/o/minimoe/blob/main/book/chapters/00_x.ipynb"
    context = {"header_buttons": [{"buttons": [{"url": binder}, {"url": colab}]}]}
    book_extension().point_launch_links_at_notebooks(app, "chapters/00_x", "page.html", context, None)
    urls = [button["url"] for button in context["header_buttons"][0]["buttons"]]
    assert urls == [binder.replace("book/chapters/", "notebooks/"), colab.replace("book/chapters/", "notebooks/")]


def test_tagged_multiline_equations_are_not_wrapped_in_split():
    from docutils import nodes
    from docutils.utils import new_document

    document = new_document("chapter")
    tagged = r"g = \begin{cases} s, & \text{selected},\\ 0, & \text{otherwise} \end{cases} \tag{V2, 21}"
    plain = r"a \\ b"
    document += [nodes.math_block(tagged, tagged, nowrap=False, number=None),
                 nodes.math_block(plain, plain, nowrap=False, number=None)]
    app = SimpleNamespace(config=SimpleNamespace(mathjax_display=(r"\[", r"\]")))
    book_extension().keep_tags_out_of_split(app, document, "chapter")
    first, second = document.children
    assert first["nowrap"] and first.astext() == rf"\[{tagged}\]"
    assert not second["nowrap"] and second.astext() == plain


# ------------------------------------------------------------------------------------------------ the build


def run_build(book: Path = BOOK) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "book" / "build.py"), "--book", str(book)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=20 * 60,
    )


@functools.cache
def build_once() -> subprocess.CompletedProcess:
    """Build the real book once per session (incremental: only changed chapters execute)."""
    return run_build()


def built_site() -> tuple[Path, str]:
    """The HTML folder and the build log of a successful build."""
    result = build_once()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return HTML, result.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_build_writes_every_chapter_and_times_it():
    html, log = built_site()
    assert TITLE in (html / "index.html").read_text(encoding="utf-8") or (html / "intro.html").exists()
    for stem in chapter_stems():
        page = html / "chapters" / f"{stem}.html"
        assert page.exists(), f"{page} was not built"
        timing = rf"^{re.escape(stem)}\s+\d+\.\ds\s+(executed|cached)"
        assert re.search(timing, log, re.MULTILINE), log[-2000:]
    assert "python -m http.server -d" in log


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_built_pages_load_nothing_from_outside():
    html, _ = built_site()
    resource = re.compile(
        r"<(?:script|img|iframe)[^>]*\ssrc=\"([^\"]+)\"|<link[^>]*\shref=\"([^\"]+)\"[^>]*>"
    )
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for match in resource.finditer(text):
            url = match.group(1) or match.group(2)
            tag = match.group(0)
            if match.group(2) and not re.search(r"rel=\"(stylesheet|preload|icon|modulepreload)\"", tag):
                continue
            assert "://" not in url and not url.startswith("//"), f"{page.name} loads {url}"
    for css in (html / "_static").rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="ignore")
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), f"{css} loads from outside"


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
@pytest.mark.xdist_group("book")
def test_rebuild_reexecutes_only_the_edited_chapter_and_a_cell_error_fails_it(tmp_path):
    vendor = BOOK / "_vendor"
    if not (vendor / "site").exists():
        built_site()
    book = tmp_path / "book"
    shutil.copytree(BOOK, book, ignore=shutil.ignore_patterns("_build", "_vendor", "chapters", "__pycache__"))
    (book / "_vendor").symlink_to(vendor)
    (tmp_path / "notebooks").mkdir()
    write_tiny_notebook(tmp_path / "notebooks" / "00_first.ipynb", 0, "print(6 * 7)")
    write_tiny_notebook(tmp_path / "notebooks" / "03_second.ipynb", 3, "print(2 ** 10)")

    first = run_build(book)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert table_states(first.stdout) == {"00_first": "executed", "03_second": "executed"}
    assert "1024" in (book / "_build" / "html" / "chapters" / "03_second.html").read_text(encoding="utf-8")

    write_tiny_notebook(tmp_path / "notebooks" / "03_second.ipynb", 3, "print(2 ** 11)")
    second = run_build(book)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert table_states(second.stdout) == {"00_first": "cached", "03_second": "executed"}
    assert "2048" in (book / "_build" / "html" / "chapters" / "03_second.html").read_text(encoding="utf-8")

    write_tiny_notebook(tmp_path / "notebooks" / "03_second.ipynb", 3, "raise RuntimeError('broken chapter')")
    broken = run_build(book)
    assert broken.returncode != 0
    assert "broken chapter" in broken.stdout + broken.stderr
    assert re.search(r"^03_second\s+-\s+FAILED", broken.stdout, re.MULTILINE), broken.stdout[-2000:]


# ---------------------------------------------------------------------------------------------- the browser


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site_url():
    html, _ = built_site()
    handler = functools.partial(QuietHandler, directory=html)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    entry = sync_playwright()
    with entry() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page)
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, watch


def site_pages() -> list[str]:
    return ["index.html", "glossary.html", *(f"chapters/{stem}.html" for stem in chapter_stems())]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("path", site_pages())
def test_page_renders_offline_in_chromium(browser, site_url, path):
    page, watch = open_page(browser, f"{site_url}/{path}")
    try:
        assert TITLE in page.title() or page.title().endswith(TITLE), page.title()
        page.wait_for_selector("mjx-container", timeout=30_000)
        assert page.locator("mjx-container").count() > 0, "MathJax rendered nothing"
        assert page.locator("mjx-merror").count() == 0, "MathJax reported a TeX error"
        if path.startswith("chapters/"):
            assert page.locator("article img").count() > 0, "a chapter page shows no figure"
            if page.locator("script[type='application/vnd.jupyter.widget-state+json']").count():
                page.wait_for_selector(".jupyter-widgets", timeout=30_000)
        shot = screenshot_path("book", path.replace("/", "_").replace(".html", ".png"))
        page.screenshot(path=shot, full_page=True)
        assert watch.external == [], f"requests left localhost: {watch.external}"
        assert watch.console_errors == [], watch.console_errors
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("term, expected_page", [("latent", "glossary"), ("鍵值快取", "glossary")])
def test_search_page_finds_a_term(browser, site_url, term, expected_page):
    page, watch = open_page(browser, f"{site_url}/search.html?q={term}")
    try:
        results = page.locator("#search-results ul.search li a")
        results.first.wait_for(timeout=30_000)
        hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
        assert any(expected_page in href for href in hrefs), hrefs
        page.screenshot(path=screenshot_path("book", f"search_{expected_page}_{len(term)}.png"))
        assert watch.external == [] and watch.console_errors == [], (watch.external, watch.console_errors)
    finally:
        page.close()
