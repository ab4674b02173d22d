"""The README stays a front page and the docs take their figures from bench/results.

Cheap checks (no mkdocs, no torch): the full build, `mkdocs build --strict`, runs in CI
as `make docs`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def _hook():
    spec = importlib.util.spec_from_file_location("bench_tables", DOCS / "hooks" / "bench_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_tables = _hook()

# A typed benchmark figure: a metric quoted to three decimals, or a measured duration or
# size. Goals (two decimals), settings and command arguments are not figures.
FIGURE = re.compile(r"\b0\.\d{3,}\b|\b\d[\d,.]*\s?(?:ms|GB|MB|GiB|MiB)\b|\b\d[\d,.]*\s?s\b(?!/)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)


def _prose(text: str) -> str:
    """``text`` without code blocks, code spans and bench markers."""
    text = bench_tables.TABLE.sub("", text)
    text = bench_tables.VALUE.sub("", text)
    return CODE.sub("", text)


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links into docs/"
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_bench_marker_renders(page):
    """Each table or value a page asks for exists and matches its results file."""
    rendered = bench_tables.render(page.read_text())
    assert "{{ bench_" not in rendered


def test_every_table_is_used_and_renders():
    used = {m.group(1) for page in PAGES for m in bench_tables.TABLE.finditer(page.read_text())}
    assert used <= set(bench_tables.TABLES), f"unknown tables: {used - set(bench_tables.TABLES)}"
    assert set(bench_tables.TABLES) <= used, f"tables no page shows: {set(bench_tables.TABLES) - used}"
    for name in bench_tables.TABLES:
        assert bench_tables.table(name).startswith("| ")


def test_unknown_markers_fail():
    with pytest.raises(bench_tables.BenchError):
        bench_tables.render("{{ bench_table no_such_table }}")
    with pytest.raises(bench_tables.BenchError):
        bench_tables.render("{{ bench_value main_job no.such.key }}")
    with pytest.raises(bench_tables.BenchError):
        bench_tables.render("{{ bench_value no_such_file x }}")
    with pytest.raises(bench_tables.BenchError, match="not a list of lines"):
        bench_tables.render("{{ bench_text main_job wall_min }}")


def test_recorded_lines_render_as_a_text_block():
    lines = bench_tables.load("apply_queue_pipeline_champion")["status_1000"]
    rendered = bench_tables.render("{{ bench_text apply_queue_pipeline_champion status_1000 }}")
    assert rendered == "\n".join(["```text", *lines, "```"])


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_no_typed_figures(page):
    """Figures come from bench/results through markers, never typed into the prose."""
    typed = FIGURE.findall(_prose(page.read_text()))
    assert not typed, f"{page.relative_to(ROOT)} types figures {typed}: use a bench marker"


def test_reference_covers_the_package():
    """One reference page per top-level mend module or package, the package included."""
    pages = bench_tables.reference_pages()
    assert "reference/mend.md" in pages
    assert "reference/mend.corrections.md" in pages
    assert "::: mend.corrections.queue" in pages["reference/mend.corrections.md"]
