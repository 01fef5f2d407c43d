"""Judges (installed as `rlaif.judges`): prompt templates (`templates`), verdict parsing (`verdicts`), combining
orders and judges (`combine`), the pairwise LLM judge (`pairwise`), the reward-model judge (`reward_model`), the
ensemble (`ensemble`), the protocol they share (`protocol`), a run's judge loaded once (`setup`) and opened
(`factory`).

Layer: above the generation backends and the base modules of `rlaif`; below the pipeline.
"""
