"""NucleusSampler draws from the same distribution as transformers' temperature + top-p warpers."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from rlaif.generation.nucleus_sampling import NucleusSampler

VOCAB = 64


def transformers_distribution(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The probabilities transformers' own sampling draws from (do_sample=True, top_k off)."""
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    return warped.softmax(dim=-1)


def rows_of_logits() -> torch.Tensor:
    """Peaked rows (nucleus of a few tokens) and flat ones (nucleus of most of the vocabulary)."""
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(4, VOCAB, generator=generator) * 4
    flat = torch.randn(4, VOCAB, generator=generator) * 0.3
    return torch.cat([peaked, flat])


@pytest.mark.parametrize("temperature,top_p", [(0.8, 0.95), (1.0, 0.5), (1.3, 0.9), (0.7, 1.0)])
def test_the_kept_tokens_and_their_weights_are_transformers(temperature, top_p):
    scores = rows_of_logits()
    sampler = NucleusSampler(temperature, top_p)
    probs, ids = (scores / temperature).softmax(dim=-1).sort(dim=-1, descending=True)
    kept = sampler.nucleus(probs)
    ours = torch.zeros_like(kept).scatter_(-1, ids, kept)
    ours = ours / ours.sum(dim=-1, keepdim=True)
    theirs = transformers_distribution(scores, temperature, top_p)
    assert torch.equal(ours > 0, theirs > 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("candidates", [4, 256])  # 4: the flat rows take the full-sort path
def test_drawn_tokens_follow_the_transformers_distribution(candidates):
    scores = rows_of_logits()
    expected = transformers_distribution(scores, 0.8, 0.9)
    sampler = NucleusSampler(0.8, 0.9, candidates=candidates)
    draws = 4000
    torch.manual_seed(1)
    tokens = sampler.draw(scores.repeat_interleave(draws, dim=0)).view(len(scores), draws)
    observed = torch.nn.functional.one_hot(tokens, VOCAB).float().mean(dim=1)
    assert (observed[expected == 0] == 0).all(), "a token outside the nucleus was drawn"
    total_variation = (observed - expected).abs().sum(dim=-1) / 2
    assert total_variation.max() < 0.06, total_variation


def test_generate_takes_the_drawn_token():
    scores = rows_of_logits()
    torch.manual_seed(2)
    drawn = NucleusSampler(1.0, 0.9).draw(scores)
    torch.manual_seed(2)
    handed_to_generate = NucleusSampler(1.0, 0.9)(None, scores)
    assert torch.equal(handed_to_generate.argmax(dim=-1), drawn)
    assert torch.isfinite(handed_to_generate).sum() == len(scores)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 0.9), (1.0, 0.0), (1.0, 1.5)])
def test_settings_that_cannot_sample_are_refused(temperature, top_p):
    with pytest.raises(ValueError, match="temperature|top_p"):
        NucleusSampler(temperature, top_p)
