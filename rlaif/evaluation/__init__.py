"""Measuring the pipeline against people and against its starting point: how well a judge agrees with people,
what routing part of its pairs to people would buy (`judge_agreement`), and whether the trained policy beats
the model it started from (`policy_eval`).

Layer: above the pipeline (it simulates its routing), training and the judges; below the flows and the CLI.
"""
