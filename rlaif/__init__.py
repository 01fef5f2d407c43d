"""RLAIF preference-data pipeline: core library."""
