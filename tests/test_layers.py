"""The package's layout: layers that only import downwards (import-linter, as `make lint` runs it), no import
cycles between modules, and the judge's template loaded once per `rlaif label`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LINT_LAYERS = PROJECT_ROOT / ".ci" / "lint_layers.py"

sys.path.insert(0, str(LINT_LAYERS.parent))
from lint_layers import stage  # noqa: E402  (the script `make lint` runs; not a package)


def test_the_layers_contract_holds():
    result = subprocess.run([sys.executable, str(LINT_LAYERS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    tree = stage(PROJECT_ROOT, tmp_path)
    schema = tree / "rlaif" / "schema.py"
    schema.write_text(schema.read_text() + "\nfrom rlaif.flows import label  # noqa: E402 - an upward import\n")
    result = subprocess.run([sys.executable, str(LINT_LAYERS), "--tree", str(tree)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "rlaif.schema -> rlaif.flows.label" in result.stdout


FIND_CYCLES = """
import json, grimp
graph = grimp.build_graph("rlaif")
cycles = []
for importer in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(importer)):
        chain = graph.find_shortest_chain(importer=imported, imported=importer)
        if chain:
            cycles.append([importer, *chain])
print(json.dumps(cycles))
"""


def test_no_module_imports_one_that_imports_it_back(tmp_path):
    tree = stage(PROJECT_ROOT, tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", FIND_CYCLES],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(found.stdout) == []
