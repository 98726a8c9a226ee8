"""Text prompts for open-vocabulary land cover: templates, synonyms, cached text embeddings.

Class names are data: a vocabulary (a list of class names) is turned into one L2-normalised
embedding per class by filling every template with the name and each of its synonyms, encoding
the sentences with a frozen text encoder, normalising, averaging over all sentences of the class
and normalising again (CLIP's prompt ensembling).

Defaults are remote-sensing ones: aerial/satellite templates (:data:`REMOTE_SENSING_TEMPLATES`)
and land-cover synonyms (:data:`LAND_COVER_SYNONYMS`; e.g. "impervious surfaces" → road,
pavement) for the ISPRS and WHU-OPT-SAR class names and common land-cover words. A name without
an entry is used as written.

:class:`TextEmbeddingCache` computes the embeddings of a vocabulary once and keeps them; the
encoder is called again only for a vocabulary (or template set) it has not seen.

Example:
    >>> prompts_for_class("low vegetation", templates=("an aerial photo of {}.",))
    ['an aerial photo of low vegetation.', 'an aerial photo of grass.', 'an aerial photo of lawn.']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

#: Aerial / satellite prompt templates (``{}`` is replaced by the class phrase).
REMOTE_SENSING_TEMPLATES: tuple[str, ...] = (
    "an aerial photo of {}.",
    "a satellite image of {}.",
    "an aerial image showing {}.",
    "a remote sensing image of {}.",
    "an overhead view of {}.",
    "a top-down aerial photo of {}.",
    "an orthophoto of {}.",
    "a high-resolution aerial image of {}.",
)

#: CLIP's plain template (the paper's VOC/COCO configuration).
PHOTO_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

#: Land-cover synonyms: lower-case class name → phrases averaged into the class embedding
#: (the name itself comes first where it is a good phrase).
LAND_COVER_SYNONYMS: dict[str, tuple[str, ...]] = {
    # ISPRS Vaihingen / Potsdam
    "impervious surfaces": ("road", "pavement", "paved surface", "asphalt"),
    "impervious surface": ("road", "pavement", "paved surface", "asphalt"),
    "building": ("building", "roof", "house"),
    "low vegetation": ("low vegetation", "grass", "lawn"),
    "tree": ("tree", "trees", "tree canopy"),
    "car": ("car", "vehicle", "parked car"),
    "clutter": ("clutter", "background", "debris"),
    # WHU-OPT-SAR
    "farmland": ("farmland", "cropland", "agricultural field"),
    "city": ("city", "urban area", "dense buildings"),
    "village": ("village", "rural settlement", "small houses"),
    "water": ("water", "river", "lake"),
    "forest": ("forest", "woodland", "trees"),
    "road": ("road", "street", "highway"),
    "others": ("bare land", "background", "other land"),
    # Common land-cover words
    "grass": ("grass", "lawn", "meadow"),
    "grassland": ("grassland", "meadow", "pasture"),
    "bare soil": ("bare soil", "bare land", "sand"),
    "bare land": ("bare land", "bare soil", "barren land"),
    "background": ("background",),
    "vegetation": ("vegetation", "plants", "greenery"),
    "parking lot": ("parking lot", "parking area"),
    "railway": ("railway", "railroad", "train tracks"),
    "shrub": ("shrub", "bushes", "scrubland"),
    "wetland": ("wetland", "marsh", "swamp"),
    "snow": ("snow", "ice"),
    "cloud": ("cloud", "clouds"),
}


def class_phrases(name: str, synonyms: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Phrases for class ``name``: its synonyms (case-insensitive lookup) or the name itself.

    Args:
        name: Class name as given by the user.
        synonyms: Name → phrases table; ``None`` = :data:`LAND_COVER_SYNONYMS`; ``{}`` = none.

    Raises:
        ValueError: Empty name.
    """
    clean = " ".join(str(name).replace("_", " ").split())
    if not clean:
        raise ValueError(f"class names must be non-empty, got {name!r}")
    table = LAND_COVER_SYNONYMS if synonyms is None else synonyms
    phrases = table.get(clean.lower()) or table.get(clean)
    if not phrases:
        return [clean]
    return list(dict.fromkeys(phrases))


def prompts_for_class(
    name: str,
    templates: Sequence[str] | None = None,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """All sentences of a class: every template filled with every phrase of the class.

    Args:
        name: Class name.
        templates: Templates with one ``{}``; ``None`` = :data:`REMOTE_SENSING_TEMPLATES`.
        synonyms: See :func:`class_phrases`.

    Raises:
        ValueError: A template without ``{}`` or an empty template list.
    """
    templates = REMOTE_SENSING_TEMPLATES if templates is None else tuple(templates)
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' placeholder")
    return [t.format(p) for p in class_phrases(name, synonyms) for t in templates]


EncodeFn = Callable[[list[str]], Tensor]


class TextEmbeddingCache:
    """Per-vocabulary cache of class text embeddings.

    Args:
        encode: Function mapping a list of sentences to ``M×E`` text features (e.g. tokenizer +
            frozen CLIP text tower); called without gradients.
        templates: Prompt templates (``None`` = remote-sensing templates).
        synonyms: Synonym table (``None`` = land-cover synonyms, ``{}`` = none).

    Attributes:
        encoder_calls: How many times ``encode`` ran (one per new vocabulary).
    """

    def __init__(
        self,
        encode: EncodeFn,
        templates: Sequence[str] | None = None,
        synonyms: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.encode = encode
        self.templates = tuple(REMOTE_SENSING_TEMPLATES if templates is None else templates)
        self.synonyms = synonyms
        self.encoder_calls = 0
        self._cache: dict[tuple[str, ...], Tensor] = {}

    def clear(self) -> None:
        """Forget all cached vocabularies (e.g. after loading other text weights)."""
        self._cache.clear()

    def __contains__(self, names: Sequence[str]) -> bool:
        return tuple(names) in self._cache

    def __call__(self, names: Sequence[str]) -> Tensor:
        """Return ``C×E`` L2-normalised embeddings of the vocabulary ``names`` (cached).

        Raises:
            ValueError: An empty vocabulary or an empty name.
        """
        key = tuple(str(n) for n in names)
        if not key:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if key not in self._cache:
            self._cache[key] = self._compute(key)
        return self._cache[key]

    def get(self, names: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Like calling the cache, but keep (and return) the embeddings on ``device``."""
        emb = self(names)
        if device is not None and emb.device != torch.device(device):
            emb = emb.to(device)
            self._cache[tuple(str(n) for n in names)] = emb
        return emb

    def _compute(self, names: tuple[str, ...]) -> Tensor:
        sentences: list[str] = []
        counts: list[int] = []
        for name in names:
            prompts = prompts_for_class(name, self.templates, self.synonyms)
            sentences.extend(prompts)
            counts.append(len(prompts))
        # Never cache inference-mode tensors: they could not be used in a later training step.
        with torch.inference_mode(False), torch.no_grad():
            features = self.encode(sentences).float()
            self.encoder_calls += 1
            features = torch.nn.functional.normalize(features, dim=-1)
            per_class = [chunk.mean(dim=0) for chunk in torch.split(features, counts)]
            return torch.nn.functional.normalize(torch.stack(per_class), dim=-1)
