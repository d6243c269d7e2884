"""DAS similarity terms on hand-made token sets, checked against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from tampkit.core.diversity import TermAverager, cosine_gram, diversity, similarity_terms

TEXT, IMAGE = 0, 1


def test_terms_by_hand() -> None:
    # image tokens: e1, e2, -e1 (pairs: 0, -1, 0 -> positives none -> 0; all-pairs mean -1/3)
    # text tokens: e1, (e1+e2)/sqrt2 (pair: 1/sqrt2)
    r = 1 / math.sqrt(2)
    y = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [1, 0], [1, 1]])
    labels = torch.tensor([IMAGE, IMAGE, IMAGE, TEXT, TEXT])
    terms = similarity_terms(cosine_gram(y), labels, positive_only=True)
    assert terms["image"] == pytest.approx(0.0)
    assert terms["text"] == pytest.approx(r)
    # cross: image x text cosines: [1, r], [0, r], [-1, -r] -> sum = r, over 6 pairs
    assert terms["text-image"] == pytest.approx(r / 6)
    assert set(terms) == {"text", "image", "text-image"}
    all_pairs = similarity_terms(cosine_gram(y), labels, positive_only=False)
    assert all_pairs["image"] == pytest.approx(-1 / 3)
    assert diversity(terms) == pytest.approx((1 - 0) + (1 - r) + (1 - r / 6))


def test_scale_of_tokens_does_not_matter() -> None:
    y = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 1])
    scaled = y * torch.arange(1, 10).float()[:, None]
    a = similarity_terms(cosine_gram(y), labels)
    b = similarity_terms(cosine_gram(scaled), labels)
    assert a == pytest.approx(b)


def test_undefined_terms_are_skipped_not_nan() -> None:
    y = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    text_only = similarity_terms(cosine_gram(y), torch.zeros(4, dtype=torch.long))
    assert set(text_only) == {"text"}
    one_image = similarity_terms(cosine_gram(y), torch.tensor([1, 0, 0, 0]))
    assert set(one_image) == {"text", "text-image"}  # no intra-image term from a single token
    assert all(math.isfinite(v) for v in one_image.values())


def test_six_terms_for_three_modalities_and_averaging() -> None:
    y = torch.randn(12, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 0, 0, 2, 2, 2, 3, 3, 3, 0, 2, 3])
    terms = similarity_terms(cosine_gram(y), labels)
    assert set(terms) == {"text", "video", "audio", "text-video", "text-audio", "video-audio"}
    averager = TermAverager()
    averager.add({"text": 0.2, "text-image": 0.5})
    averager.add({"text": 0.4})
    assert averager.means() == pytest.approx({"text": 0.3, "text-image": 0.5})
