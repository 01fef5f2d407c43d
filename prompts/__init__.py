"""Judge prompt templates shipped with the pipeline (installed as `rlaif.bundled.prompts`).

Users keep their own templates anywhere and name them by path.
"""
