"""Configs shipped with the pipeline (installed as `rlaif.bundled.configs`); demo.yaml is the default."""
