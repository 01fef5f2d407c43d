"""Check that the package's layers only import downwards: import-linter's contracts in pyproject.toml, run on
the package laid out as it installs.

The checkout keeps flows/, judges/ and training/ at its top (they install as rlaif.flows, rlaif.judges and
rlaif.training), but import-linter finds a package's modules by walking its folder; so the package is first
copied into a scratch folder the way `[tool.setuptools.package-dir]` lays it out, then checked there.

    python .ci/lint_layers.py                 # `make lint` runs this
    python .ci/lint_layers.py --tree DIR      # check a tree laid out already (the test that an upward import fails)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def stage(checkout: Path, target: Path) -> Path:
    """Copy the rlaif package into `target` as it installs (mapped folders moved into place); returns target."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(checkout / "rlaif", target / "rlaif", ignore=ignore)
    mapped = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapped.items():
        shutil.copytree(checkout / folder, target / package.replace(".", "/"), ignore=ignore, dirs_exist_ok=True)
    return target


def check(tree: Path, config: Path) -> int:
    """Run import-linter's contracts from `config` on the package in `tree`; returns its exit status."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(lint_imports), "--no-cache", str(config)], cwd=tree, env=environment).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="a folder holding rlaif/ laid out as installed")
    args = parser.parse_args()
    config = CHECKOUT / "pyproject.toml"
    if args.tree:
        return check(args.tree, config)
    with tempfile.TemporaryDirectory(prefix="rlaif-layers-") as scratch:
        return check(stage(CHECKOUT, Path(scratch)), config)


if __name__ == "__main__":
    sys.exit(main())
