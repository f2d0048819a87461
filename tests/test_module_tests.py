"""The tests mirror the package: every module of minimoe has its own test file, named after it.

The rule: the tests of ``minimoe/<path>.py`` live in ``tests/test_<path>.py``, with ``/`` written ``_`` and a private
module's leading underscore dropped: ``minimoe/model.py`` -> ``tests/test_model.py``, ``minimoe/moe/gate.py`` ->
``tests/test_moe_gate.py``, ``minimoe/_kernel_client.py`` -> ``tests/test_kernel_client.py``. A test that calls
several modules sits with the one whose behaviour it asserts. Helpers that several test files share live in
``tests/_<topic>.py``, which are not test files. Package ``__init__.py`` files are not checked: they only re-export,
and tests/test_imports.py imports every module. A module with no test file of its own is in ``EXEMPT``, with the
reason and where its tests are.

The other test files are about no single module (the book, the notebooks, the labs, the hub, the docs…) and are
listed in ``CROSS_CUTTING``. A test file that is neither a module's nor listed there fails this test too, so a file
left behind by a renamed or removed module is noticed.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

EXEMPT = {
    "minimoe/attention/mha.py": "the MHA/GQA/MQA baseline: tested together with MLA by the invariants over every "
                                "attention kind, in tests/test_attention_masking.py and tests/test_attention_cache.py",
    "minimoe/localise.py": "chapter 11's experiment: prepare() is tested in tests/test_adapt.py (every frozen-base "
                           "method), the file chapter 11 cites; the runs themselves are the chapter's",
    "minimoe/norm.py": "RMSNorm: checked against its formula in tests/test_mtp.py (test_mtp_combine_is_eq_21), and run "
                       "by every model test",
    "minimoe/speculative.py": "self-speculative decoding with the MTP modules: tested in tests/test_mtp.py, the file "
                              "chapter 10 and book/sources.md cite for it",
}

CROSS_CUTTING = {
    "test_assignments.py": "the labs graded through the judge, end to end, and its sandbox",
    "test_judge_a3.py": "lab a3 through the judge",
    "test_judge_a4.py": "lab a4 through the judge",
    "test_judge_a5.py": "lab a5 through the judge",
    "test_safe_collect.py": "the hub's collect of submissions (assignments/safe_collect.py)",
    "test_lab_docs.py": "one set of instructions for the labs",
    "test_benchmarks.py": "the benchmark scripts run end to end",
    "test_book.py": "the book's sources, its build and the built site",
    "test_book_rebuild.py": "the build executes again only what changed, beside the book build",
    "test_citations.py": "every citation resolves",
    "test_docs.py": "the architecture pages agree with the tree",
    "test_failures.py": "bad input fails loudly: one table across the package",
    "test_front_door.py": "the README and the site list every chapter, lab and benchmark",
    "test_hub.py": "the course hub end to end",
    "test_i18n.py": "the 繁體中文 edition's catalogs",
    "test_imports.py": "the package's import graph has no cycle",
    "test_jupyterlab.py": "a student's session in JupyterLab",
    "test_notebooks.py": "every chapter is stripped and structured (tests/test_book.py executes them)",
    "test_page_text.py": "what a reader meets on a rendered page",
    "test_python_version.py": "every Python file runs on Python 3.10",
    "test_quoted_numbers.py": "the parameter counts the chapters quote",
    "test_module_tests.py": "this file",
}


def file_for(module: str) -> str:
    """``minimoe/moe/gate.py`` -> ``test_moe_gate.py``; ``minimoe/_kernel_client.py`` -> ``test_kernel_client.py``."""
    parts = module.removeprefix("minimoe/").removesuffix(".py").split("/")
    return "test_" + "_".join(part.lstrip("_") for part in parts) + ".py"


def test_every_module_has_its_test_file():
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "minimoe").rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(f"{m} -> tests/{file_for(m)}" for m in modules - set(EXEMPT) if not (TESTS / file_for(m)).exists())
    assert missing == [], "modules without their test file: write it, or add the module to EXEMPT with the reason"
    stale = sorted(m for m in EXEMPT if m not in modules or (TESTS / file_for(m)).exists())
    assert stale == [], "EXEMPT names modules that no longer exist or that now have their own test file"
    orphans = sorted(p.name for p in TESTS.glob("test_*.py")
                     if p.name not in {file_for(m) for m in modules} and p.name not in CROSS_CUTTING)
    assert orphans == [], "test files of no module: name them after their module, or list them in CROSS_CUTTING"


def test_the_files_conftest_starts_first_exist():
    """tests/conftest.py names the files `make test` starts first (the book build); a renamed file would silently
    lose its place."""
    from conftest import FIRST  # tests/ is on sys.path, as for the helpers tests/_*.py

    missing = [path for path in FIRST if not (ROOT / path).is_file()]
    assert missing == [], f"tests/conftest.py starts files that do not exist: {missing}"
