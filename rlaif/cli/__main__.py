"""`python -m rlaif.cli ...`, e.g. under `accelerate launch -m rlaif.cli train dpo CONFIG`."""

from rlaif.cli.main import run

run()
