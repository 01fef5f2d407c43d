"""Measuring the pipeline against human labels: how well a judge agrees with people, and what routing part
of its pairs to people would buy (`judge_agreement`).

Layer: above the pipeline (it simulates its routing) and the judges; below the flows and the CLI.
"""
