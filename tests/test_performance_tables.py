"""The README's Performance tables are the results files' tables, as benchmarks/performance_tables.py makes them."""

from __future__ import annotations

from pathlib import Path

from benchmarks import performance_tables

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_table_row_made_from_the_results_files_is_in_the_readme(capsys):
    performance_tables.main()
    printed = capsys.readouterr().out.splitlines()
    rows = [line for line in printed if line.startswith("| ") and "---" not in line]
    assert len(rows) > 40  # every results file the script reads is there
    # and the line above each table: what was measured, on which machine, when
    captions = [line for line in printed if line.strip() and not line.startswith(("|", "###", "`"))]
    assert len(captions) >= 10
    readme = README.read_text().splitlines()
    assert [line for line in rows + captions if line not in readme] == []


def test_every_figure_the_readme_states_in_its_text_comes_from_a_results_file():
    figures = performance_tables.text_figures()
    assert len(figures) == len(performance_tables.TEXT_FIGURES)  # every results file they come from is there
    text = " ".join(README.read_text().split())  # the README's lines are wrapped
    assert [figure for figure in figures if figure not in text] == []
