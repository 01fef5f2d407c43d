"""The built wheel carries the bundled configs and prompt templates, found without the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_wheel_bundles_configs_and_prompts_and_finds_them_installed(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(PROJECT_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("rlaif_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rlaif/bundled/configs/demo.yaml" in names
    assert "rlaif/bundled/prompts/__init__.py" in names
    assert {"rlaif/judges/__init__.py", "rlaif/flows/__init__.py", "rlaif/training/__init__.py"} <= names
    assert {"rlaif/cli/main.py", "rlaif/review/web/item.html.j2", "rlaif/pipeline/templates/report.html.j2"} <= names
    # One top-level import package: nothing generic (flows, judges, training) lands in site-packages.
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"rlaif"}
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # Run from an unrelated directory with the unpacked wheel first on the path: no checkout involved.
    probe = (
        "import rlaif.config as c; print(c.__file__); print(c.default_config_path()); "
        "print(c.load_config().policy.model); import rlaif.judges.setup as j; print(j.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    module, config_path, model, judges = result.stdout.split()
    assert module.startswith(str(target)) and config_path.startswith(str(target)) and judges.startswith(str(target))
    assert model == "smollm2-135m-instruct"
