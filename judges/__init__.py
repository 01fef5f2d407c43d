"""Judges: the Judge protocol, pairwise verdict, logprob and reward-model judges, template loading."""
