"""The 繁體中文 edition's catalogs (book/locales/zh_HK/LC_MESSAGES): complete, faithful to the English, Traditional.

Each translated message keeps the English message's maths, code, numbers, citations and links; uses the
glossary's translation of every glossary term it contains (book/glossary.md is the one list of terms); has no
Simplified-only character (OpenCC); writes Hong Kong's technical vocabulary. The slow test re-extracts the English
and checks that the catalogs are in step with it (what `make translations` updates).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"


@cache
def i18n():
    spec = importlib.util.spec_from_file_location("book_i18n", BOOK / "i18n.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@cache
def translated() -> list[tuple[str, str, str]]:
    """(catalog, English, 繁體中文) for every translated, non-fuzzy message."""
    rows = []
    root = i18n().catalogs(BOOK)
    for path in sorted(root.rglob("*.po")):
        for message in i18n().read_catalog(path):
            if message.id and message.string and not message.fuzzy:
                rows.append((str(path.relative_to(root)), message.id, message.string))
    return rows


# Spans that must come through a translation unchanged (in any order).
MATH = re.compile(r"(?<!\\)\$\$.+?(?<!\\)\$\$|(?<!\\)\$[^$\n]+?(?<!\\)\$", re.DOTALL)  # not \$ (a dollar)
ROLE = re.compile(r"\{(\w+)\}`([^`]*)`")  # {cite}`key`, {term}`name`, {doc}`text <target>`
CODE = re.compile(r"``.+?``|`[^`\n]+`")
URL = re.compile(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>|href=\"([^\"]+)\"")
ARCHIVE = "minimoe-notebooks.zip"
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")


def spans(text: str) -> dict[str, Counter]:
    """The parts of a message that a translation keeps: maths, code, citations, link targets, numbers."""
    found = {"maths": Counter(MATH.findall(text))}
    text = MATH.sub(" ", text)
    roles = ROLE.findall(text)
    found["citations"] = Counter(target for kind, target in roles if kind == "cite")
    found["documents"] = Counter(re.sub(r"^.*<(.+)>$", r"\1", t) for k, t in roles if k in ("doc", "ref", "numref"))
    text = ROLE.sub(" ", text)
    found["code"] = Counter(CODE.findall(text))
    text = CODE.sub(" ", text)
    # The edition's pages sit one folder below the site's root, where the one notebooks archive is.
    found["links"] = Counter("".join(m).removeprefix("../") if "".join(m).endswith(ARCHIVE) else "".join(m)
                             for m in URL.findall(text))
    text = URL.sub(" ", text)
    found["numbers"] = Counter(n.replace(",", "") for n in NUMBER.findall(text))
    return found


def term_roles(text: str) -> list[str]:
    return [target for kind, target in ROLE.findall(MATH.sub(" ", text)) if kind == "term"]


def test_every_message_is_translated_and_none_is_fuzzy():
    problems = i18n().catalog_problems(BOOK)
    assert not problems, (f"{len(problems)} messages untranslated or fuzzy (make translations, then translate; "
                          f"docs/translation.md):\n{i18n().summarise(problems)}")


def test_translations_keep_maths_code_numbers_citations_and_links():
    bad = []
    for catalog, english, chinese in translated():
        want, got = spans(english), spans(chinese)
        for kind in want:
            if want[kind] != got[kind]:
                missing, extra = want[kind] - got[kind], got[kind] - want[kind]
                bad.append(f"{catalog}: {kind} differ (missing {dict(missing)}, extra {dict(extra)}) in "
                           f"{english[:70]!r}")
    assert not bad, "\n".join(bad[:30]) + (f"\n… {len(bad) - 30} more" if len(bad) > 30 else "")


def test_term_links_point_at_the_same_glossary_entry():
    names = {name: n for n, term in enumerate(i18n().glossary(BOOK)) for name in term.english + term.chinese}
    bad = []
    for catalog, english, chinese in translated():
        entry = Counter(names.get(re.sub(r"^.*<(.+)>$", r"\1", t), t) for t in term_roles(english))
        other = Counter(names.get(re.sub(r"^.*<(.+)>$", r"\1", t), t) for t in term_roles(chinese))
        if entry != other:
            bad.append(f"{catalog}: {{term}} links {term_roles(english)} became {term_roles(chinese)}")
    assert not bad, "\n".join(bad[:30])


ACRONYM = re.compile(r"^[A-Z0-9][\w-]*[A-Z][\w-]*$")  # MLA, MoE, GRPO, E4M3: may stay as written


def prose(text: str) -> str:
    """A message without its maths, roles, code and link targets: where glossary terms are words."""
    for pattern in (MATH, ROLE, CODE, URL):
        text = pattern.sub(" ", text)
    return text


def is_display_maths(message: str) -> bool:
    """A display equation (a math block is a message of its own): no word left once LaTeX commands and
    \\text{...} are removed."""
    return not re.search(r"[A-Za-z]{3,}", re.sub(r"\\text\{[^}]*\}|\\[A-Za-z]+", " ", message))


def glossary_misses(english: str, chinese: str) -> list[str]:
    """The glossary terms of `english` whose 繁體中文 name `chinese` lacks (an acronym may stay as written)."""
    if is_display_maths(english):
        return []
    misses = []
    words = prose(english)
    for term in (t for t in i18n().glossary(BOOK) if t.chinese):
        phrases = [n for n in term.english if not ACRONYM.match(n)]
        found = [n for n in phrases if re.search(rf"(?<![\w-]){re.escape(n)}(s|es)?(?![\w-])", words, re.IGNORECASE)]
        if found and not any(name in chinese for name in term.chinese):
            misses.append(f"{found[0]!r} should be {' / '.join(term.chinese)}")
    return misses


def test_glossary_terms_are_rendered_by_their_glossary_translation():
    """A glossary term in an English message appears in the translation as the glossary's 繁體中文 name (the English
    may follow in parentheses)."""
    names = {name for term in i18n().glossary(BOOK) for name in term.english + term.chinese}
    bad = []
    for catalog, english, chinese in translated():
        if catalog == "glossary.po" and english in names:
            continue  # the glossary's term lines are the names links use: kept as they are
        bad += [f"{catalog}: {miss} in {chinese[:80]!r}" for miss in glossary_misses(english, chinese)]
    assert not bad, "\n".join(bad[:40]) + (f"\n… {len(bad) - 40} more" if len(bad) > 40 else "")


def test_no_simplified_only_characters():
    bad = [f"{catalog}: {''.join(sorted(chars))} in {chinese[:60]!r}" for catalog, _, chinese in translated()
           if (chars := i18n().simplified_only(chinese))]
    assert not bad, "\n".join(sorted(bad)[:40])


# Hong Kong's written Chinese, as the course's sources write it, over Taiwan's and the mainland's words.
HONG_KONG = {"軟體": "軟件", "網路": "網絡", "晶片": "芯片", "硬體": "硬件", "資料集": "數據集", "數据": "數據"}


def test_hong_kong_vocabulary():
    bad = [f"{catalog}: {word} (write {hk}) in {chinese[:60]!r}"
           for catalog, _, chinese in translated() for word, hk in HONG_KONG.items() if word in chinese]
    assert not bad, "\n".join(bad[:40])


def test_interface_strings_are_translated():
    sys.path.insert(0, str(BOOK / "_ext"))
    from minimoe_i18n import UI_MESSAGES

    catalog = {m.id: m.string for m in i18n().read_catalog(i18n().catalogs(BOOK) / "sphinx.po") if m.id}
    missing = [m for m in UI_MESSAGES if not catalog.get(m)]
    assert not missing, f"sphinx.po lacks translations of {missing}"
    for message in UI_MESSAGES:
        assert re.findall(r"\{\w+\}", message) == re.findall(r"\{\w+\}", catalog[message]), message


def test_spans_and_glossary_checks_catch_a_bad_translation():
    english = "The KV cache of {term}`MLA` holds $d_c + d^R_h$ elements per token {cite}`deepseekv2`, 576 in V3."
    faithful = "{term}`MLA` 的鍵值快取每個詞元保存 $d_c + d^R_h$ 個元素 {cite}`deepseekv2`，V3 中為 576 個。"
    assert spans(english) == spans(faithful)
    careless = "MLA 的 KV 快取每個詞元保存 $d_c+d^R_h$ 個元素，V3 中為 512 個。"
    differ = {k for k in spans(english) if spans(english)[k] != spans(careless)[k]}
    assert differ == {"maths", "citations", "numbers"}
    assert glossary_misses(english, faithful) == []
    assert is_display_maths(r"f_i = \frac{N_r}{K_r T} \sum_t \mathbb{1}(\text{token } t \text{ selects } i)")
    assert i18n().simplified_only(faithful) == set() and i18n().simplified_only("数据与软件") == set("数据与软")
    assert glossary_misses(english, careless) == ["'KV cache' should be 鍵值快取"]


@pytest.mark.slow
def test_catalogs_are_in_step_with_the_english(tmp_path):
    """The messages Sphinx extracts from today's English are exactly those of the catalogs (make translations)."""
    pot = tmp_path / "gettext"
    if not (BOOK / "chapters").exists():
        pytest.skip("book/chapters is created by book/build.py (make book or make translations)")
    result = subprocess.run(i18n().sphinx_command(BOOK, "gettext", pot, None), capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = i18n().catalogs(BOOK)
    stale = []
    for template in sorted(pot.rglob("*.pot")):
        name = template.relative_to(pot).with_suffix(".po")
        wanted = {m.id for m in i18n().read_catalog(template) if m.id}
        have = {m.id for m in i18n().read_catalog(root / name) if m.id} if (root / name).exists() else set()
        if wanted - have:
            stale.append(f"{name}: {len(wanted - have)} English messages are not in the catalog, e.g. "
                         f"{min(wanted - have)[:80]!r}")
    assert not stale, "run `make translations`:\n" + "\n".join(stale)
