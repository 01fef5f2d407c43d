"""Prefect flows and tasks: thin wrappers over the plain functions of rlaif, judges and training."""
