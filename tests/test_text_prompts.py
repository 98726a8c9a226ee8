"""Remote-sensing prompt templates, land-cover synonyms and the per-vocabulary embedding cache."""

from __future__ import annotations

import pytest
import torch

from rsprompt.models.text_prompts import (
    LAND_COVER_SYNONYMS,
    REMOTE_SENSING_TEMPLATES,
    TextEmbeddingCache,
    class_phrases,
    prompts_for_class,
)


def test_default_templates_are_aerial():
    assert "an aerial photo of {}." in REMOTE_SENSING_TEMPLATES
    assert "a satellite image of {}." in REMOTE_SENSING_TEMPLATES
    assert all("{}" in t for t in REMOTE_SENSING_TEMPLATES)


def test_land_cover_synonyms():
    imp = class_phrases("impervious surfaces")
    assert "road" in imp and "pavement" in imp
    assert "grass" in class_phrases("Low Vegetation")  # case-insensitive
    assert class_phrases("low_vegetation") == class_phrases("low vegetation")
    assert class_phrases("solar panel") == ["solar panel"]  # unknown: as written
    assert class_phrases("impervious surfaces", synonyms={}) == ["impervious surfaces"]
    assert all(isinstance(v, tuple) and v for v in LAND_COVER_SYNONYMS.values())
    with pytest.raises(ValueError, match="non-empty"):
        class_phrases("  ")


def test_prompts_for_class_fill_every_template_with_every_phrase():
    templates = ("an aerial photo of {}.", "a satellite image of {}.")
    prompts = prompts_for_class("low vegetation", templates)
    phrases = class_phrases("low vegetation")
    assert len(prompts) == len(phrases) * len(templates)
    assert "a satellite image of grass." in prompts
    with pytest.raises(ValueError, match="placeholder"):
        prompts_for_class("tree", ("a photo",))
    with pytest.raises(ValueError, match="at least one"):
        prompts_for_class("tree", ())


class FakeEncoder:
    """Deterministic sentence → vector encoder that counts its calls."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls = 0
        self.sentences: list[str] = []

    def vector(self, sentence: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(map(ord, sentence)) * 31 + len(sentence))
        return torch.randn(self.dim, generator=g)

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        self.calls += 1
        self.sentences.extend(sentences)
        return torch.stack([self.vector(s) for s in sentences])


def test_cache_computes_each_vocabulary_once_and_ensembles():
    enc = FakeEncoder()
    templates = ("an aerial photo of {}.", "a satellite image of {}.")
    cache = TextEmbeddingCache(enc, templates=templates)
    vocab = ["building", "solar panel"]
    emb = cache(vocab)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    again = cache(list(vocab))
    assert again is emb
    assert enc.calls == 1 and cache.encoder_calls == 1
    assert vocab in cache

    # by hand: mean of normalised sentence vectors, renormalised
    sentences = prompts_for_class("solar panel", templates)
    vecs = torch.stack([torch.nn.functional.normalize(enc.vector(s), dim=0) for s in sentences])
    expected = torch.nn.functional.normalize(vecs.mean(0), dim=0)
    assert torch.allclose(emb[1], expected, atol=1e-6)

    cache(["tree"])
    assert enc.calls == 2
    cache(vocab)
    assert enc.calls == 2
    cache.clear()
    cache(vocab)
    assert enc.calls == 3
    with pytest.raises(ValueError, match="empty"):
        cache([])
