"""The README's Performance tables are the results files' tables, as benchmarks/performance_tables.py makes them."""

from __future__ import annotations

from pathlib import Path

from benchmarks import performance_tables

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_table_row_made_from_the_results_files_is_in_the_readme(capsys):
    performance_tables.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 40  # every results file the script reads is there
    readme = README.read_text().splitlines()
    assert [row for row in rows if row not in readme] == []
