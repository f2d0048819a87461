"""The course site: book sources (fast), the offline build (slow) and the built site in chromium (browser).

The slow tests run `book/build.py`, which executes only the chapters whose code changed since the last build
(jupyter-cache), so after one `make book` they take about a minute.
"""

from __future__ import annotations

import fnmatch
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from _book import BOOK, HTML, NOTEBOOKS, REPO, book_build_module, book_module, run_build
from _browser import PageWatch, launch, screenshot_path, sync_playwright

TITLE = "minimoe: DeepSeek's ideas from first principles"

REQUIRED_BIB = {
    "deepseekv2": "2405.04434", "deepseekv3": "2412.19437", "deepseekr1": "2501.12948",
    "deepseekmath": "2402.03300", "dapo": "2503.14476", "drgrpo": "2503.20783", "gshard": "2006.16668",
    "switch": "2101.03961", "vaswani2017attention": "1706.03762", "shazeer2019mqa": "1911.02150",
    "ainslie2023gqa": "2305.13245", "su2021roformer": "2104.09864", "peng2023yarn": "2309.00071",
    "schulman2017ppo": "1707.06347", "dai2024deepseekmoe": "2401.06066", "gloeckle2024multitoken": "2404.19737",
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


CJK = re.compile(r"[\u3400-\u9fff]")


def glossary_entries() -> list[list[str]]:
    """The names of each glossary entry: the unindented lines before its indented definition."""
    block = re.search(r"```\{glossary\}\n(.*?)\n```", (BOOK / "glossary.md").read_text(), re.DOTALL).group(1)
    entries, names = [], []
    for line in block.splitlines():
        if line.startswith(":") or not line.strip():
            continue
        if line.startswith(" "):
            if names:
                entries.append(names)
            names = []
        else:
            names.append(line.strip())
    return entries


def test_every_glossary_entry_has_an_english_and_a_chinese_term():
    entries = glossary_entries()
    assert len(entries) >= 30 and ["KV cache", "鍵值快取"] in entries
    for names in entries:
        assert any(not CJK.search(n) for n in names), f"glossary entry {names} has no English term"
        assert any(CJK.search(n) for n in names), f"glossary entry {names} has no 繁體中文 term"


def test_glossary_terms_are_drawn_on_one_line(tmp_path):
    """The extension joins an entry's names into one <dt>; every name stays a link target."""
    pytest.importorskip("myst_parser")
    from sphinx.application import Sphinx

    (tmp_path / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(BOOK / '_ext')!r})\n"
                                      "extensions = ['myst_parser', 'minimoe_book']\nhtml_theme = 'basic'\n")
    (tmp_path / "index.md").write_text("# Glossary\n\nSee {term}`鍵值快取` and {term}`多頭潛在注意力`.\n\n"
                                       "```{glossary}\nMLA\nMulti-head Latent Attention\n多頭潛在注意力\n"
                                       "  Attention.\n\nKV cache\n鍵值快取\n  The cache.\n```\n")
    app = Sphinx(str(tmp_path), str(tmp_path), str(tmp_path / "_build"), str(tmp_path / "_doctrees"), "html",
                 status=None, warning=None, freshenv=True)
    app.build()
    page = (tmp_path / "_build" / "index.html").read_text(encoding="utf-8")
    dts = sorted(re.findall(r"<dt\b.*?</dt>", page, re.DOTALL), key=lambda dt: "MLA" in dt)
    assert len(dts) == 2, dts
    text = [re.sub(r"<[^>]+>", "", dt) for dt in dts]
    assert text[0].startswith("KV cache · 鍵值快取"), text
    assert text[1].startswith("MLA · Multi-head Latent Attention · 多頭潛在注意力"), text
    for target in re.findall(r'<a class="reference internal" href="#([^"]+)"', page):
        assert f'id="{target}"' in page, f"a link to #{target} has no target"


def test_config_keeps_the_site_offline_and_fails_on_cell_errors():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    sphinx = config["sphinx"]["config"]
    assert config["title"] == TITLE
    assert config["execute"]["execute_notebooks"] == "cache"
    assert sphinx["nb_execution_raise_on_error"] is True
    local = [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]
    assert not [u for u in local if "://" in u], f"a script is loaded from outside the site: {local}"


def book_extension():
    return book_module("_ext/minimoe_book.py")


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


def test_every_chapter_installs_minimoe_from_the_configured_repository(tmp_path, monkeypatch):
    repository = book_module("repository.py")
    assert repository.problems() == []  # as committed: every chapter agrees with book/_config.yml
    # Naming a repository rewrites the config and every chapter's install cell, in a copy of both.
    (tmp_path / "book").mkdir()
    shutil.copy(BOOK / "_config.yml", tmp_path / "book" / "_config.yml")
    shutil.copytree(BOOK.parent / "notebooks", tmp_path / "notebooks")
    monkeypatch.setattr(repository, "ROOT", tmp_path)
    monkeypatch.setattr(repository, "CONFIG", tmp_path / "book" / "_config.yml")
    repository.set_url("https://github.com/owner/minimoe")
    assert repository.configured_url() == "https://github.com/owner/minimoe" and repository.problems() == []
    first = "".join(json.loads((tmp_path / "notebooks" / f"{chapter_stems()[0]}.ipynb").read_text())["cells"][1]
                    ["source"])
    assert "'minimoe @ git+https://github.com/owner/minimoe'" in first
    with pytest.raises(SystemExit, match="must look like"):
        repository.set_url("not a url")


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


@functools.cache
def build_once() -> subprocess.CompletedProcess:
    """Build the real book once per session (incremental: only changed chapters execute), both editions."""
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
    assert "python3 -m http.server --bind 127.0.0.1 -d" in log


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_every_chapter_executes_without_error_shows_a_figure_and_keeps_its_budget():
    """Each chapter as the build executed it (the archive students download holds the outputs): no cell error, a
    figure or an explorer, and an execution time within twice its budget in `book/build.py`. `make test` runs a
    second test worker beside the build on the two cores, so a chapter may take up to twice its time on an idle
    machine here; `benchmarks/book_builds.py` measures the budgets themselves, idle."""
    import zipfile

    html, log = built_site()
    build = book_build_module()
    with zipfile.ZipFile(html / build.ARCHIVE) as archive:
        for stem in chapter_stems():
            nb = json.loads(archive.read(f"minimoe-notebooks/{stem}.ipynb"))
            outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
            errors = [o for o in outputs if o["output_type"] == "error"]
            assert not errors, f"{stem}: {errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
            assert any(kind in o.get("data", {}) for o in outputs for kind in
                       ("image/png", "image/svg+xml", "application/vnd.jupyter.widget-view+json")), \
                f"{stem} shows no figure"
            seconds = float(re.search(rf"^{re.escape(stem)}\s+(\d+\.\d)s", log, re.MULTILINE).group(1))
            budget = build.LONG_CHAPTER_BUDGET_S if stem in build.LONG_CHAPTERS else build.CHAPTER_BUDGET_S
            assert seconds <= 2 * budget, f"{stem} executed in {seconds:.0f} s (budget {budget} s idle, x2 here)"


def test_a_change_to_the_package_empties_the_execution_cache(tmp_path, monkeypatch):
    """jupyter-cache keys a chapter on its own code: after an edit to `minimoe`, a cached chapter would show the
    old package's outputs, so the build executes every chapter again."""
    build = book_build_module()
    cache = tmp_path / "_build" / ".jupyter_cache"
    cache.mkdir(parents=True)
    monkeypatch.setattr(build, "package_fingerprint", lambda: "one")
    build.drop_stale_executions(tmp_path)  # a cache without a stamp: who knows what executed it
    assert not cache.exists()
    cache.mkdir()
    build.drop_stale_executions(tmp_path)
    assert cache.exists(), "the same package keeps the cache"
    monkeypatch.setattr(build, "package_fingerprint", lambda: "two")
    build.drop_stale_executions(tmp_path)
    assert not cache.exists()
    assert (tmp_path / "_build" / ".minimoe.sha256").read_text().strip() == "two"


def test_the_package_fingerprint_sees_an_edit(tmp_path, monkeypatch):
    package = tmp_path / "minimoe"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "minimoe", raising=False)
    build = book_build_module()
    before = build.package_fingerprint()
    (package / "__init__.py").write_text("x = 2\n")
    assert build.package_fingerprint() != before


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


def wait_for_typeset(page) -> None:
    """Wait for what the checks read rather than for `networkidle` (500 ms without a request, which a loaded
    machine can miss until the timeout): after `load`, MathJax's first typesetting where the page loads MathJax.
    Widgets and search results are waited for by the tests that read them."""
    page.wait_for_function("() => !window.MathJax || !MathJax.startup || MathJax.startup.promise", timeout=30_000)
    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page)
    page.goto(url, wait_until="load")
    wait_for_typeset(page)
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


# ------------------------------------------------------------------------------------ publishing: fast checks


def test_licence_citation_and_version_agree():
    text = (REPO / "pyproject.toml").read_text()  # read without tomllib, which Python 3.10 lacks
    project = {key: re.search(rf'^{key}\s*=\s*"([^"]*)"', text, re.MULTILINE).group(1) for key in ("license", "version")}
    assert project["license"] == "MIT", "project.license should be the SPDX string 'MIT'"
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Permission is hereby granted" in licence
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert str(cff["version"]) == project["version"], "CITATION.cff's version differs from pyproject.toml's"
    assert cff["title"] == TITLE
    assert book_extension().package_version() == project["version"]


def test_landing_page_syllabus_and_instructor_pages():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = {c.get("file") for part in toc["parts"] for c in part["chapters"]}
    assert {"syllabus", "instructor", "assignments", "glossary", "bibliography"} <= files
    intro = (BOOK / "intro.md").read_text()
    assert "appear here as they are written" not in intro
    for heading in ("## The chapters", "## Before you start", "## How to run it", "## How to cite"):
        assert heading in intro, heading
    for stem in chapter_stems():
        assert f"chapters/{stem}" in intro, f"the landing page's chapter table lacks {stem}"
    syllabus = (BOOK / "syllabus.md").read_text()
    weeks = re.findall(r"^\| (\d) ", syllabus, re.MULTILINE)
    assert 6 <= len(set(weeks)) <= 8, weeks
    instructor = (BOOK / "instructor.md").read_text()
    for n in sorted(int(stem[:2]) for stem in chapter_stems()):
        section = re.search(rf"^## Chapter {n} .*?(?=^## |\Z)", instructor, re.MULTILINE | re.DOTALL)
        assert section, f"instructor.md has no section for chapter {n}"
        for part in ("**Outcomes.**", "**Discussion.**", "**Common mistakes.**"):
            assert part in section.group(0), f"chapter {n} lacks {part}"


def test_citation_labels_tell_one_authors_papers_apart_and_show_one_link():
    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin

    book_extension()  # registers the styles
    style = find_plugin("pybtex.style.formatting", "minimoe")()
    entries = list(style.format_bibliography(parse_file(str(BOOK / "references.bib"))))
    labels = {entry.key: entry.label for entry in entries}
    assert len(set(labels.values())) == len(labels), f"two entries share a label: {labels}"
    assert labels["deepseekv2"] != labels["deepseekv3"]
    assert re.fullmatch(r"DeepSeek-AI 2024[ab]", labels["deepseekv2"]), labels["deepseekv2"]
    for entry in entries:
        text = entry.text.render_as("text")
        links = re.findall(r"https?://|arXiv:", text)
        assert len(links) <= 1, f"{entry.key} shows {len(links)} links: {text}"
    config = yaml.safe_load((BOOK / "_config.yml").read_text())["sphinx"]["config"]
    assert config["bibtex_default_style"] == "minimoe" and config["bibtex_reference_style"] == "label"


def test_markdown_outputs_render_as_myst_and_explorers_are_frozen():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())["sphinx"]["config"]
    assert config["nb_render_markdown_format"] == "myst", "display(Markdown(...)) tables need the myst renderer"
    state = {"state": {
        "s": {"model_name": "IntSliderModel", "state": {"disabled": False}},
        "o": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "data": {"text/markdown": "**step 3**: `1 + 2`", "text/plain": "x"}}]}},
    }}
    frozen = book_extension().freeze_widget_state(state)["state"]
    assert frozen["s"]["state"]["disabled"] is True
    html = frozen["o"]["state"]["outputs"][0]["data"]["text/html"]
    assert "<strong>step 3</strong>" in html and "<code>1 + 2</code>" in html


def test_build_log_drops_the_tcp_warnings_and_the_file_url():
    build = book_build_module()
    keep = build.LogFilter()
    lines = ["reading sources\n",
             "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication …\n",
             "=" * 60 + "\n", "Finished generating HTML for book.\n", "Your book's HTML pages are here:\n",
             "    file:///work/book/_build/html/index.html\n", "=" * 60 + "\n", "done\n"]
    shown = "".join(keep(line) for line in lines)
    assert shown == "reading sources\ndone\n"


def test_kernel_startup_prints_a_finished_bar_as_one_line_of_text():
    code = (f"exec(open({str(BOOK / '_ext' / 'kernel_startup.py')!r}).read())\n"
            "from tqdm.auto import tqdm\n"
            "for _ in tqdm(range(5), desc='train'): pass\n"
            "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots(); ax.bar([0, 1], [1, 2]); ax.set_title('Load per expert')\n"
            "print(_describe(fig))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and re.match(r"train: 100%\|█+\| 5/5 \[", lines[0]), result.stdout
    assert lines[1] == "bar chart (Load per expert)", lines[1]


# ------------------------------------------------------------------------------- publishing: in the browser

WIDTHS = {"desktop": 1280, "phone": 390}
# Visible text (code, maths and scripts left out) that is Markdown or TeX which was never rendered.
RAW_MARKUP = [
    (re.compile(r"\|\s*:?-{3,}:?\s*\|"), "a Markdown table rule (|---|)"),
    (re.compile(r"\*\*[^\s*][^*]{0,80}\*\*"), "**bold** markers"),
    (re.compile(r"`[^`\s][^`]{0,80}`"), "`backticks`"),
    (re.compile(r"\$\\?[A-Za-z][^$\n]{0,40}\$"), "$TeX$ between dollars"),
    (re.compile(r"\\(frac|mathrm|sum|sqrt|operatorname|left|right|begin)\b"), "a TeX command"),
]
VISIBLE_TEXT_JS = """() => {
    const article = document.querySelector('article') || document.body;
    const copy = article.cloneNode(true);
    copy.querySelectorAll('pre, code, kbd, script, style, mjx-container, .highlight, textarea, .MathJax,'
                          + ' mjx-assistive-mml').forEach(el => el.remove());
    return copy.innerText;
}"""
LAYOUT_JS = """() => {
    const article = document.querySelector('article.bd-article') || document.querySelector('article');
    const column = article.getBoundingClientRect().width;
    const wide = [];
    for (const img of article.querySelectorAll('img')) {
        const box = img.getBoundingClientRect();
        if (box.width > column + 1) wide.push([img.getAttribute('src'), Math.round(box.width), Math.round(column)]);
    }
    const alts = Array.from(article.querySelectorAll('.cell_output img')).map(img => img.getAttribute('alt') || '');
    return {scroll: document.documentElement.scrollWidth, viewport: window.innerWidth, wide, alts,
            tables: article.querySelectorAll('table').length};
}"""


def chapter_prints_tables(stem: str) -> bool:
    """Whether a chapter's code prints a Markdown table (a `|---|` rule inside a code cell)."""
    import json

    cells = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]
    return any(c["cell_type"] == "code" and re.search(r"\|-{3}|---\|", "".join(c["source"])) for c in cells)


EDITION = "zh-hant"  # the 繁體中文 edition's folder in the site (book/i18n.py: PREFIX)


def english_pages() -> list[str]:
    return ["index.html", "syllabus.html", "instructor.html", "assignments.html", "students.html", "glossary.html",
            "sources.html", "bibliography.html", *(f"chapters/{stem}.html" for stem in chapter_stems())]


def publish_pages() -> list[str]:
    """Every page of both editions."""
    return [*english_pages(), *(f"{EDITION}/{page}" for page in english_pages())]


def open_sized(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    watch = PageWatch(page)
    page.goto(url, wait_until="load")
    wait_for_typeset(page)
    return page, watch


def visible_toggle(page, kind: str):
    buttons = page.locator(f"button.{kind}-toggle")
    for i in range(buttons.count()):
        if buttons.nth(i).is_visible():
            return buttons.nth(i)
    raise AssertionError(f"no visible .{kind}-toggle button")


def check_menus(page, width: int, has_toc: bool) -> None:
    """The site menu (and "on this page") open on narrow screens; the menu button hides the sidebar on wide ones."""
    if width >= 992:
        sidebar = page.locator("#pst-primary-sidebar")
        assert sidebar.is_visible(), "the site menu is not shown beside the page"
        visible_toggle(page, "primary").click()
        page.wait_for_timeout(600)
        assert not sidebar.is_visible(), "the menu button did not hide the sidebar"
        visible_toggle(page, "primary").click()
        page.wait_for_timeout(600)
        assert sidebar.is_visible(), "the menu button did not bring the sidebar back"
        return
    kinds = ["primary", "secondary"] if has_toc else ["primary"]
    for kind in kinds:
        dialog = page.locator(f"#pst-{kind}-sidebar-modal")
        visible_toggle(page, kind).click()
        page.wait_for_timeout(400)
        assert dialog.evaluate("d => d.open"), f"the {kind} sidebar button opened nothing at {width} px"
        links = dialog.locator("a")
        assert links.count() > 0 and any(links.nth(i).is_visible() for i in range(min(links.count(), 20))), \
            f"the {kind} sidebar opened empty at {width} px"
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        assert not dialog.evaluate("d => d.open"), f"Escape did not close the {kind} sidebar"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("size", list(WIDTHS))
@pytest.mark.parametrize("path", publish_pages())
def test_page_is_readable_at_desktop_and_phone_width(browser, site_url, path, size):
    width = WIDTHS[size]
    page, watch = open_sized(browser, f"{site_url}/{path}", width)
    try:
        shot = screenshot_path("book", f"{size}_{path.replace('/', '_').replace('.html', '.png')}")
        page.screenshot(path=shot, full_page=True)
        text = page.evaluate(VISIBLE_TEXT_JS)
        for pattern, what in RAW_MARKUP:
            match = pattern.search(text)
            assert not match, f"{path} shows {what} as text: …{text[max(match.start() - 60, 0):match.end() + 60]}…"
        layout = page.evaluate(LAYOUT_JS)
        if width <= 400:
            assert layout["scroll"] <= layout["viewport"] + 1, (
                f"{path} scrolls sideways at {width} px: {layout['scroll']} px wide")
        assert not layout["wide"], f"figures wider than the column: {layout['wide']}"
        for alt in layout["alts"]:
            assert alt and ".png" not in alt and "/" not in alt.split(":")[0], f"alt text {alt!r} in {path}"
        if path.startswith("chapters/") and chapter_prints_tables(Path(path).stem):
            assert layout["tables"] > 0, f"{path} prints Markdown tables but shows no <table>"
        check_menus(page, width, has_toc=page.locator("#pst-page-toc-nav").count() > 0)
        assert watch.external == [], f"requests left localhost: {watch.external}"
        assert watch.console_errors == [], watch.console_errors
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("stem", [s for s in chapter_stems()])
def test_explorers_say_they_run_live_and_progress_bars_are_text(browser, site_url, stem):
    page, watch = open_sized(browser, f"{site_url}/chapters/{stem}.html", 1280)
    try:
        views = page.locator("script[type='application/vnd.jupyter.widget-view+json']")
        notes = page.locator(".minimoe-live-note")
        assert notes.count() == views.count(), f"{views.count()} explorers, {notes.count()} live notes"
        for i in range(notes.count()):
            assert "JupyterLab" in notes.nth(i).inner_text()
            href = notes.nth(i).locator("a").first.get_attribute("href")
            assert href.endswith("minimoe-notebooks.zip")
        if views.count():
            page.wait_for_selector(".jupyter-widgets", timeout=30_000)
            sliders = page.locator(".widget-slider")
            assert sliders.count() == page.locator(".widget-slider.mod-disabled, .widget-slider:has(.noUi-target[disabled])").count() \
                or all(sliders.nth(i).evaluate("e => !!e.closest('.mod-disabled') || e.classList.contains('mod-disabled')")
                       for i in range(sliders.count())), "an explorer's slider looks live in the static book"
        assert page.locator(".widget-hprogress, .widget-progress").count() == 0, "a progress bar widget is shown"
        assert watch.external == [] and watch.console_errors == [], (watch.external, watch.console_errors)
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
def test_glossary_chinese_renders_with_a_cjk_font(browser, site_url):
    page, watch = open_sized(browser, f"{site_url}/glossary.html", 1280)
    try:
        # the Chinese name sits beside the English one, in its own span (book/_ext: glossary_terms_on_one_line)
        term = page.locator("dl.glossary dt .minimoe-term-name", has_text="鍵值快取").first
        assert term.is_visible(), "the glossary does not show 鍵值快取"
        assert "KV cache" in term.locator("xpath=..").inner_text(), "鍵值快取 is not on the line of KV cache"
        term.evaluate("e => e.id = e.id || 'minimoe-cjk-probe'")
        probe = term.get_attribute("id")
        cdp = page.context.new_cdp_session(page)
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": f"#{probe}"})["nodeId"]
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        cjk = [f for f in fonts if re.search(r"CJK|Han|Hei|Ming|Song|Kai|Noto Sans TC|Noto Serif TC", f["familyName"])]
        assert cjk and sum(f["glyphCount"] for f in cjk) >= 4, (
            f"鍵值快取 is drawn with {fonts}: install fonts-noto-cjk (make browser-deps)")
        assert watch.external == []
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_site_has_version_notebook_archive_and_no_launch_buttons_without_repository():
    import json
    import zipfile

    html, log = built_site()
    landing = (html / "intro.html").read_text(encoding="utf-8")
    version = book_extension().package_version()
    assert f"minimoe {version}" in landing, "the footer does not show the version"
    assert "file://" not in log and "Kernel is running over TCP" not in log
    assert "launch-buttons" not in (html / "chapters" / f"{chapter_stems()[0]}.html").read_text(encoding="utf-8")
    with zipfile.ZipFile(html / "minimoe-notebooks.zip") as archive:
        names = archive.namelist()
        for stem in chapter_stems():
            name = f"minimoe-notebooks/{stem}.ipynb"
            assert name in names, f"the archive lacks {stem}"
            nb = json.loads(archive.read(name))
            assert "find_spec(\"minimoe\")" in "".join(nb["cells"][0]["source"]), "no install cell first"
            code = [c for c in nb["cells"] if c["cell_type"] == "code"]
            assert any(c["outputs"] for c in code), f"{stem} in the archive is not executed"
            assert not any("execution" in c["metadata"] for c in nb["cells"]), f"{stem} keeps execution metadata"
        assert "minimoe-notebooks/README.txt" in names and "minimoe-notebooks/LICENSE" in names


# ------------------------------------------------------------------------------------------ the 繁體中文 edition


def i18n_module():
    return book_module("i18n.py")


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_chinese_edition_is_built_from_the_same_execution():
    html, log = built_site()
    assert "繁體中文 edition (zh_HK)" in log and "must come from the English edition's jupyter-cache" not in log, \
        "the 繁體中文 edition executed a chapter again"
    for page in english_pages():
        if page == "index.html":
            continue  # a redirect to intro.html in both editions
        text = (html / EDITION / page).read_text(encoding="utf-8")
        assert '<html lang="zh-HK"' in text, f"{EDITION}/{page} is not marked zh-HK"
        assert 'hreflang="en"' in text and 'class="btn btn-sm minimoe-language-switch"' in text, page
        english = (html / page).read_text(encoding="utf-8")
        assert '<html lang="en"' in english and 'hreflang="zh-HK" href="' in english, page
    assert not list((html / EDITION).rglob("*.zip")), "the notebooks archive must exist once, at the site's root"
    assert not (html / "jupyter_execute").exists(), "the edition's cell outputs leaked into the English site"
    # Sphinx's and the themes' interface strings are Traditional (pydata-sphinx-theme's own zh is Simplified).
    intro = (html / EDITION / "intro.html").read_text(encoding="utf-8")
    assert 'placeholder="搜尋本書' in intro and "Skip to main content" not in intro and "跳至主要內容" in intro
    text = re.sub(r"<(script|style|pre)[^>]*>.*?</\1>|<[^>]+>", " ", intro, flags=re.DOTALL)
    assert i18n_module().simplified_only(text) == set(), "Simplified characters on the 繁體中文 landing page"


def cjk_glyphs(page, locator) -> tuple[int, list]:
    """How many glyphs of `locator`'s first element the browser drew with a CJK font, and every font it used."""
    element = locator.first
    element.evaluate("e => e.id = e.id || 'minimoe-cjk-probe'")
    probe = element.get_attribute("id")
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": f"#{probe}"})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cjk = [f for f in fonts if re.search(r"CJK|Han|Hei|Ming|Song|Kai|Noto Sans (TC|HK)|Noto Serif TC", f["familyName"])]
    return sum(f["glyphCount"] for f in cjk), fonts


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("path", ["intro.html", "chapters/02_multi_head_latent_attention.html"])
def test_chinese_text_is_drawn_with_a_cjk_font(browser, site_url, path):
    page, watch = open_page(browser, f"{site_url}/{EDITION}/{path}")
    try:
        heading = page.locator("article h1")
        assert re.search(r"[\u4e00-\u9fff]", heading.first.inner_text()), heading.first.inner_text()
        glyphs, fonts = cjk_glyphs(page, heading)
        assert glyphs >= 4, f"the heading is drawn with {fonts}: install fonts-noto-cjk (make browser-deps)"
        assert watch.external == []
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("width", list(WIDTHS.values()))
def test_language_switch_opens_the_same_page_in_the_other_edition(browser, site_url, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        for path in english_pages():
            if path == "index.html":
                continue
            page.goto(f"{site_url}/{path}", wait_until="load")
            switch = page.locator("a.minimoe-language-switch")
            assert switch.count() == 1 and switch.is_visible(), f"no visible language switch on {path} at {width} px"
            switch.click()
            page.wait_for_load_state("load")
            assert page.url == f"{site_url}/{EDITION}/{path}", (path, page.url)
            assert page.locator("html").get_attribute("lang") == "zh-HK"
            page.locator("a.minimoe-language-switch").click()
            page.wait_for_load_state("load")
            assert page.url == f"{site_url}/{path}", (path, page.url)
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.xdist_group("book")
@pytest.mark.parametrize("term, chapter", [("專家", "03_mixture_of_experts"),
                                           ("潛在注意力", "02_multi_head_latent_attention")])
def test_chinese_search_finds_the_chapter(browser, site_url, term, chapter):
    """Sphinx's Chinese search segments with jieba and the edition's Traditional dictionary (book/i18n.py)."""
    page, watch = open_page(browser, f"{site_url}/{EDITION}/search.html?q={term}")
    try:
        results = page.locator("#search-results ul.search li a")
        results.first.wait_for(timeout=30_000)
        hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
        assert any(f"chapters/{chapter}.html" in href for href in hrefs), hrefs
        assert watch.external == [] and watch.console_errors == [], (watch.external, watch.console_errors)
    finally:
        page.close()
