"""Contrastive loss semantics and feature-cache accumulation equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipfood_assets.modeling.losses import (
    FeatureCacheAccumulator,
    accumulate_per_micro_batch,
    contrastive_loss,
    negatives_per_pair,
)


def _embeddings(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _reference_clip_loss(image, text, scale, excluded_i2t, excluded_t2i, negatives=None, neg_excluded=None):
    """Row-by-row InfoNCE with python loops, the definition the loss must match."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    n = image.shape[0]
    total_i2t = total_t2i = 0.0
    for i in range(n):
        logits = [scale * float(image[i] @ text[j]) for j in range(n) if j == i or not excluded_i2t[i][j]]
        if negatives is not None:
            normed = F.normalize(negatives, dim=-1)
            logits += [scale * float(image[i] @ normed[j]) for j in range(len(normed)) if not neg_excluded[i][j]]
        total_i2t += -scale * float(image[i] @ text[i]) + math.log(sum(math.exp(v) for v in logits))
        logits = [scale * float(text[i] @ image[j]) for j in range(n) if j == i or not excluded_t2i[i][j]]
        total_t2i += -scale * float(text[i] @ image[i]) + math.log(sum(math.exp(v) for v in logits))
    return (total_i2t + total_t2i) / (2 * n)


def test_clip_loss_matches_reference_with_same_recipe_mask():
    image, text = _embeddings(5)
    recipes = ["a", "a", "b", "c", "c"]
    loss = contrastive_loss(image, text, torch.tensor(math.log(10.0)), recipe_ids=recipes, kind="clip")
    excluded = [[recipes[i] == recipes[j] and i != j for j in range(5)] for i in range(5)]
    assert float(loss) == pytest.approx(_reference_clip_loss(image, text, 10.0, excluded, excluded), rel=1e-5)


def test_same_recipe_mask_removes_false_negatives():
    image, noise = _embeddings(4, seed=1)
    text = image + 0.1 * noise  # well aligned pairs: the loss is small unless a false negative is counted
    # Pairs 0 and 1 are the same recipe photographed twice with the same caption.
    text[1] = text[0]
    image[1] = image[0]
    recipes = [7, 7, 8, 9]
    masked = contrastive_loss(image, text, torch.tensor(4.0), recipe_ids=recipes, kind="clip")
    unmasked = contrastive_loss(image, text, torch.tensor(4.0), recipe_ids=recipes, kind="clip", mask_same_recipe=False)
    # Unmasked, pair 0 must beat an identical copy of itself: at least log 2 on those rows.
    assert float(unmasked) > float(masked)
    # Unmasked, rows 0 and 1 (both directions) each pay >= log 2 against the identical copy.
    assert float(unmasked) >= math.log(2) / 2
    distinct = contrastive_loss(image, text, torch.tensor(4.0), recipe_ids=[1, 2, 3, 4], kind="clip")
    assert float(distinct) == pytest.approx(float(unmasked), rel=1e-6)  # no shared recipe, mask is a no-op


def test_labelled_negatives_enter_image_to_text_denominator_except_same_recipe():
    image, text = _embeddings(3, seed=2)
    negatives = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    recipes, neg_recipes = ["x", "y", "z"], ["y", "q"]
    loss = contrastive_loss(image, text, torch.tensor(2.0), recipe_ids=recipes,
                            negative_text_emb=negatives, negative_recipe_ids=neg_recipes)
    without = contrastive_loss(image, text, torch.tensor(2.0), recipe_ids=recipes, kind="clip_hard_negatives")
    plain = contrastive_loss(image, text, torch.tensor(2.0), recipe_ids=recipes,
                             negative_text_emb=negatives, negative_recipe_ids=neg_recipes, kind="clip")
    no_mask = [[False] * 3 for _ in range(3)]
    neg_excluded = [[recipes[i] == neg_recipes[j] for j in range(2)] for i in range(3)]
    reference = _reference_clip_loss(image, text, math.exp(2.0), no_mask, no_mask, negatives, neg_excluded)
    assert float(loss) == pytest.approx(reference, rel=1e-5)
    assert float(loss) > float(without)
    assert float(plain) == pytest.approx(float(without))  # "clip" ignores labelled negatives


def test_labelled_negative_gets_gradient():
    image, text = _embeddings(3, seed=4)
    negatives = torch.randn(1, 8, requires_grad=True)
    contrastive_loss(image, text, torch.tensor(2.0), recipe_ids=[1, 2, 3], negative_text_emb=negatives,
                     negative_recipe_ids=[9]).backward()
    assert negatives.grad is not None and negatives.grad.abs().sum() > 0


def test_siglip_loss_masks_and_uses_negatives():
    image, text = _embeddings(4, seed=5)
    recipes = [1, 1, 2, 3]
    kwargs = dict(recipe_ids=recipes, kind="siglip", logit_bias=-2.0)
    base = contrastive_loss(image, text, torch.tensor(2.0), **kwargs)
    unmasked = contrastive_loss(image, text, torch.tensor(2.0), mask_same_recipe=False, **kwargs)
    assert float(unmasked) > float(base)  # the masked same-recipe pairs would add positive terms
    hard = image[:1].clone()  # a negative caption embedded exactly like image 0
    with_negative = contrastive_loss(image, text, torch.tensor(2.0), negative_text_emb=hard,
                                     negative_recipe_ids=[3], **kwargs)
    scale = math.exp(2.0)
    # The negative adds -log sigmoid(-(s*cos + b)) for images of recipes 1, 1, 2 (image 3 is recipe 3).
    normed_image, normed_hard = F.normalize(image, dim=-1), F.normalize(hard, dim=-1)
    expected_extra = sum(
        -F.logsigmoid(-(scale * normed_image[i] @ normed_hard[0] - 2.0)) for i in range(3)
    ) / 4
    assert float(with_negative - base) == pytest.approx(float(expected_extra), rel=1e-5)


@pytest.mark.parametrize("bad", [dict(kind="triplet"), dict(recipe_ids=[1, 2])])
def test_contrastive_loss_rejects_bad_arguments(bad):
    image, text = _embeddings(3)
    kwargs = dict(recipe_ids=[1, 2, 3]) | bad
    with pytest.raises(ValueError):
        contrastive_loss(image, text, torch.tensor(1.0), **kwargs)


def test_negatives_per_pair_counts_unmasked_captions():
    assert negatives_per_pair(list(range(32))) == 31
    assert negatives_per_pair([1, 2]) == 1
    # Rows of recipe 1: 2 in-batch + 1 labelled (negative of recipe 1 masked); rows of recipe 2: 2 + 2.
    assert negatives_per_pair([1, 1, 2, 2], [3, 1]) == pytest.approx((3 + 3 + 4 + 4) / 4)


# --- feature-cache accumulation -------------------------------------------------------------

def _micro_batches(n_micro, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for m in range(n_micro):
        ids = torch.randint(0, 90, (size, 6), generator=g)
        ids[:, -1] = 99  # eos
        batches.append({
            "pixel_values": torch.randn(size, 3, 32, 32, generator=g),
            "input_ids": ids,
            "negative_ids": ids[:1].flip(1).roll(1, 1),
            "recipe_ids": [f"r{(m * size + i) % 5}" for i in range(size)],
        })
    return batches


def _encoder(model):
    def encode(batch):
        neg = batch["negative_ids"].clone()
        neg[:, -1] = 99
        return {
            "image": model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output,
            "text": model.get_text_features(input_ids=batch["input_ids"]).pooler_output,
            "negative": model.get_text_features(input_ids=neg).pooler_output,
        }
    return encode


def _loss_fn(model):
    def loss_fn(features, batches):
        recipes = [r for b in batches for r in b["recipe_ids"]]
        return contrastive_loss(features["image"], features["text"], model.logit_scale, recipe_ids=recipes,
                                negative_text_emb=features["negative"],
                                negative_recipe_ids=["neg"] * features["negative"].shape[0])
    return loss_fn


def _close(actual, expected, rtol=1e-4):
    """allclose with float32 summation-order noise allowed relative to the tensor's scale."""
    return torch.allclose(actual, expected, rtol=rtol, atol=max(1e-7, rtol * 0.1 * float(expected.abs().max())))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _merge(batches):
    return {
        "pixel_values": torch.cat([b["pixel_values"] for b in batches]),
        "input_ids": torch.cat([b["input_ids"] for b in batches]),
        "negative_ids": torch.cat([b["negative_ids"] for b in batches]),
        "recipe_ids": [r for b in batches for r in b["recipe_ids"]],
    }


@pytest.mark.parametrize("n_micro", [4, 1])
def test_feature_cache_gradient_equals_one_big_batch_and_differs_from_naive(random_clip, n_micro):
    torch.manual_seed(0)
    model = random_clip(dropout=0.0).float()
    batches = _micro_batches(n_micro=n_micro, size=3)
    encode, loss_fn = _encoder(model), _loss_fn(model)

    model.zero_grad()
    big = _merge(batches)
    big_loss = loss_fn(encode(big), [big])
    big_loss.backward()
    reference = _grads(model)

    model.zero_grad()
    cached_loss = FeatureCacheAccumulator(encode, loss_fn).accumulate(batches)
    cached = _grads(model)

    model.zero_grad()
    accumulate_per_micro_batch(batches, encode, loss_fn)
    naive = _grads(model)

    assert float(cached_loss) == pytest.approx(float(big_loss.detach()), rel=1e-6)
    assert reference.keys() == cached.keys() and "logit_scale" in cached
    for name, grad in reference.items():
        assert _close(cached[name], grad), (name, (cached[name] - grad).abs().max())
    differs = [n for n in reference if not _close(naive[n], reference[n], rtol=1e-2)]
    if n_micro > 1:  # one micro-batch: nothing to accumulate, both ways agree
        assert len(differs) > len(reference) // 2
    else:
        assert differs == []


def test_feature_cache_replays_dropout_masks(random_clip):
    """With dropout on, pass 2 must see the masks of pass 1: compare with the same forward done with grad."""
    batches = _micro_batches(n_micro=3, size=2, seed=1)

    def grads_of(run):
        torch.manual_seed(0)
        model = random_clip(dropout=0.3).float().train()
        torch.manual_seed(123)
        run(model)
        return _grads(model)

    def with_grad_sequential(model):
        encode, loss_fn = _encoder(model), _loss_fn(model)
        feats = [encode(b) for b in batches]
        loss_fn({k: torch.cat([f[k] for f in feats]) for k in feats[0]}, batches).backward()

    def feature_cache(model):
        FeatureCacheAccumulator(_encoder(model), _loss_fn(model)).accumulate(batches)

    reference, cached = grads_of(with_grad_sequential), grads_of(feature_cache)
    for name, grad in reference.items():
        assert _close(cached[name], grad), name
    # Dropout really changes the gradients (other masks, other gradients), so the match above
    # shows that pass 2 replayed pass 1's masks.
    torch.manual_seed(0)
    model = random_clip(dropout=0.3).float().train()
    torch.manual_seed(124)
    FeatureCacheAccumulator(_encoder(model), _loss_fn(model)).accumulate(batches)
    assert not all(_close(p, reference[n]) for n, p in _grads(model).items())


def test_accumulator_rejects_empty_batch_list():
    with pytest.raises(ValueError):
        FeatureCacheAccumulator(lambda b: {}, lambda f, b: torch.tensor(0.0)).accumulate([])
