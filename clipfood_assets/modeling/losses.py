"""Contrastive losses for image-caption pairs and accumulation that keeps every negative.

The original notebooks trained at micro-batch 2 with 16 accumulation steps and ran InfoNCE per
micro-batch: one negative per pair.  Here the loss is always computed over the whole
effective batch (:class:`FeatureCacheAccumulator`, as open_clip's ``accum_freq`` and
GradCache do): pairs of the same recipe are masked out as false negatives and labelled
negative captions (same image, another recipe's caption) join the image->text denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F

from clipfood_assets.modeling.config import LossKind

# SigLIP's initial bias (Zhai et al. 2023): with many negatives per positive the bias keeps
# the sigmoid from starting saturated on "positive".
DEFAULT_SIGLIP_BIAS = -10.0


def _is_code_tensor(ids: Any) -> bool:
    return torch.is_tensor(ids) and not ids.is_floating_point() and ids.dtype != torch.bool


def _recipe_codes(
    recipe_ids: Any, negative_recipe_ids: Any, n_pairs: int, n_negatives: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes of recipe ids shared by pairs and labelled negatives (unknown = unique).

    Integer tensors are taken as codes already (the training loop's, equal ids equal codes):
    copied to ``device`` without a host sync, no per-step string work."""
    if _is_code_tensor(recipe_ids) and (negative_recipe_ids is None or _is_code_tensor(negative_recipe_ids)):
        if recipe_ids.shape != (n_pairs,):
            raise ValueError(f"recipe_ids must have one id per pair ({n_pairs}), got shape {tuple(recipe_ids.shape)}")
        pair_codes = recipe_ids.to(device, non_blocking=True)
        if negative_recipe_ids is None:
            return pair_codes, torch.full((n_negatives,), -1, dtype=torch.long, device=device)
        if negative_recipe_ids.shape != (n_negatives,):
            raise ValueError(f"negative_recipe_ids must have {n_negatives} ids, got shape "
                             f"{tuple(negative_recipe_ids.shape)}")
        return pair_codes, negative_recipe_ids.to(device, non_blocking=True)
    pair_ids = np.asarray(recipe_ids.cpu() if torch.is_tensor(recipe_ids) else recipe_ids, dtype=object)
    if pair_ids.shape != (n_pairs,):
        raise ValueError(f"recipe_ids must have one id per pair ({n_pairs}), got shape {pair_ids.shape}")
    if negative_recipe_ids is None:
        neg_ids = np.empty(0, dtype=object)
    else:
        neg_ids = np.asarray(
            negative_recipe_ids.cpu() if torch.is_tensor(negative_recipe_ids) else negative_recipe_ids, dtype=object
        )
        if neg_ids.shape != (n_negatives,):
            raise ValueError(f"negative_recipe_ids must have {n_negatives} ids, got shape {neg_ids.shape}")
    # Stringify so that 12 and "12" are the same recipe whatever the CSV parser did.
    _, codes = np.unique(np.concatenate([pair_ids, neg_ids]).astype(str), return_inverse=True)
    codes = torch.as_tensor(codes, dtype=torch.long, device=device)
    pair_codes = codes[:n_pairs]
    neg_codes = codes[n_pairs:] if negative_recipe_ids is not None else torch.full(
        (n_negatives,), -1, dtype=torch.long, device=device  # unknown recipe: never masked
    )
    return pair_codes, neg_codes


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    recipe_ids: Any,
    negative_text_emb: torch.Tensor | None = None,
    negative_recipe_ids: Any = None,
    mask_same_recipe: bool = True,
    kind: LossKind = "clip_hard_negatives",
    logit_bias: torch.Tensor | float = DEFAULT_SIGLIP_BIAS,
) -> torch.Tensor:
    """Contrastive loss of a batch of B image-caption pairs (row i of each is pair i).

    ``logit_scale`` is the *log* inverse temperature, as ``CLIPModel.logit_scale``.
    Embeddings are L2-normalised here (so gradients flow through the normalisation).

    - ``clip``: symmetric InfoNCE over the B x B similarity matrix.
    - ``clip_hard_negatives``: as ``clip``, and the labelled negative captions
      (``negative_text_emb``, N x D) are extra columns of every image->text row.
    - ``siglip``: pairwise sigmoid loss; diagonal pairs are positives, other pairs and the
      labelled negatives are negatives; normalised by B as in SigLIP.

    With ``mask_same_recipe`` every off-diagonal pair whose caption belongs to the image's
    recipe is left out (it is not a negative), and so is a labelled negative whose recipe
    (``negative_recipe_ids``; unknown when None) is the image's recipe.
    """
    loss = LOSSES.get(kind)
    if loss is None:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must both be B x D, got {image_emb.shape}, {text_emb.shape}")
    n_pairs, device = image_emb.shape[0], image_emb.device
    use_negatives = loss.uses_negatives and negative_text_emb is not None and negative_text_emb.shape[0] > 0
    n_neg = negative_text_emb.shape[0] if use_negatives else 0
    pair_codes, neg_codes = _recipe_codes(
        recipe_ids, negative_recipe_ids if use_negatives else None, n_pairs, n_neg, device
    )

    logits, neg_logits = _similarities(image_emb, text_emb, negative_text_emb if use_negatives else None, logit_scale)
    eye = torch.eye(n_pairs, dtype=torch.bool, device=device)
    if mask_same_recipe:
        excluded = (pair_codes[:, None] == pair_codes[None, :]) & ~eye
    else:
        excluded = torch.zeros_like(eye)
    neg_excluded = pair_codes[:, None] == neg_codes[None, :] if use_negatives else None
    return loss.reduce(logits, excluded, neg_logits, neg_excluded, logit_bias)


def _similarities(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    negative_text_emb: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled cosine similarities [image, caption] of the pairs, and of every image with each labelled
    negative caption (None without negatives), in fp32 through the normalisation."""
    image = F.normalize(image_emb.float(), dim=-1)
    text = F.normalize(text_emb.float(), dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=image_emb.device).exp()
    logits = scale * image @ text.T
    if negative_text_emb is None:
        return logits, None
    negative = F.normalize(negative_text_emb.float(), dim=-1)
    return logits, scale * image @ negative.T


def _siglip_loss(
    logits: torch.Tensor,
    excluded: torch.Tensor,
    neg_logits: torch.Tensor | None,
    neg_excluded: torch.Tensor | None,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """Pairwise sigmoid loss: the diagonal is positive, every other kept pair and labelled negative is
    negative; excluded pairs add nothing; normalised by B as in SigLIP."""
    n_pairs = logits.shape[0]
    bias = torch.as_tensor(logit_bias, dtype=torch.float32, device=logits.device)
    signs = torch.eye(n_pairs, dtype=torch.bool, device=logits.device).float() * 2 - 1
    terms = F.logsigmoid(signs * (logits + bias)).masked_fill(excluded, 0.0)
    total = terms.sum()
    if neg_logits is not None:
        total = total + F.logsigmoid(-(neg_logits + bias)).masked_fill(neg_excluded, 0.0).sum()
    return -total / n_pairs


def _info_nce_loss(
    logits: torch.Tensor,
    excluded: torch.Tensor,
    neg_logits: torch.Tensor | None,
    neg_excluded: torch.Tensor | None,
    logit_bias: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE with excluded pairs masked out; labelled negatives (when given) are extra
    columns of the image->text rows only.  ``logit_bias`` is SigLIP's: a softmax is unchanged by
    one added to every logit, so InfoNCE takes none (the registry's one signature)."""
    n_pairs = logits.shape[0]
    targets = torch.arange(n_pairs, device=logits.device)
    masked = logits.masked_fill(excluded, float("-inf"))
    text_to_image = F.cross_entropy(masked.T, targets)
    if neg_logits is not None:
        masked = torch.cat([masked, neg_logits.masked_fill(neg_excluded, float("-inf"))], dim=1)
    image_to_text = F.cross_entropy(masked, targets)
    return (image_to_text + text_to_image) / 2


@dataclass(frozen=True)
class Loss:
    """One loss kind: how the scaled similarities reduce to the loss, and whether the labelled
    negative captions join it. ``reduce(logits [B, B], excluded [B, B], negative_logits [B, N] | None,
    negative_excluded [B, N] | None, logit_bias) -> scalar``."""

    reduce: Callable[..., torch.Tensor]
    uses_negatives: bool


# The loss kinds by name, as peft maps a method to its config class; config.LossKind names the same keys.
LOSSES: dict[LossKind, Loss] = {
    "clip": Loss(_info_nce_loss, uses_negatives=False),
    "clip_hard_negatives": Loss(_info_nce_loss, uses_negatives=True),
    "siglip": Loss(_siglip_loss, uses_negatives=True),
}
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)
if set(LOSSES) != set(LOSS_KINDS):  # a kind added to one and not the other fails at import, not in a run
    raise ImportError(f"losses.LOSSES {sorted(LOSSES)} and config.LossKind {sorted(LOSS_KINDS)} disagree")


def negatives_per_pair(
    recipe_ids: Sequence, negative_recipe_ids: Sequence | None = None, mask_same_recipe: bool = True
) -> float:
    """Mean number of captions each image is contrasted against (image->text), after masking."""
    negatives = [] if negative_recipe_ids is None else list(negative_recipe_ids)
    pair_codes, neg_codes = _recipe_codes(
        list(recipe_ids), negatives, len(recipe_ids), len(negatives), torch.device("cpu")
    )
    n = len(pair_codes)
    in_batch = (pair_codes[:, None] != pair_codes[None, :]).sum(1) if mask_same_recipe else torch.full((n,), n - 1)
    labelled = (pair_codes[:, None] != neg_codes[None, :]).sum(1)
    return float((in_batch + labelled).float().mean())


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


Features = dict[str, torch.Tensor]
EncodeFn = Callable[[Any], Features]
LossFn = Callable[[Features, Sequence[Any]], torch.Tensor]


class FeatureCacheAccumulator:
    """Gradient of a contrastive loss over k micro-batches as if they were one batch.

    ``encode(micro_batch) -> {name: features}`` runs the model on one micro-batch (inside
    any autocast the caller wants); ``loss_fn(features, micro_batches)`` computes the loss
    from features concatenated over all micro-batches (same keys, dim 0).

    Pass 1 encodes micro-batches 1..k-1 without autograd and caches their features,
    recording the RNG state before each; the last one is encoded with autograd.  The loss
    over the whole batch is backpropagated: into the model through the last micro-batch,
    and to the cached features (and parameters the loss uses directly, e.g. ``logit_scale``).
    Pass 2 restores each cached micro-batch's RNG state (so dropout masks are the same),
    encodes it again with autograd and backpropagates its feature gradients into the model.
    Memory: one micro-batch's activations plus the features; compute: k-1 extra forwards.
    """

    def __init__(self, encode: EncodeFn, loss_fn: LossFn) -> None:
        self.encode = encode
        self.loss_fn = loss_fn

    def accumulate(
        self, micro_batches: Sequence[Any], *, scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Add the whole-batch loss gradient to ``.grad`` of the parameters; return the loss."""
        if not micro_batches:
            raise ValueError("no micro-batches to accumulate")
        *replayed, last = micro_batches
        rng_states, cached = [], []
        with torch.no_grad():
            for micro_batch in replayed:
                rng_states.append(_rng_state())
                cached.append({k: v.detach() for k, v in self.encode(micro_batch).items()})
        live = self.encode(last)  # its graph is used by the loss backward directly: no replay
        state_after_pass_1 = _rng_state()

        keys = list(live)
        leaves = {k: torch.cat([c[k] for c in cached]).requires_grad_(True) for k in keys} if cached else {}
        features = {k: torch.cat([leaves[k], live[k]]) if cached else live[k] for k in keys}
        loss = self.loss_fn(features, micro_batches)
        (scale_loss(loss) if scale_loss is not None else loss).backward()
        if not cached:
            return loss.detach()

        grads = {
            k: (leaves[k].grad.split([c[k].shape[0] for c in cached]) if leaves[k].grad is not None
                else [None] * len(cached))
            for k in keys
        }
        for i, micro_batch in enumerate(replayed):
            _set_rng_state(rng_states[i])
            features = self.encode(micro_batch)
            outputs, output_grads = [], []
            for k in keys:
                grad = grads[k][i]
                if grad is not None and features[k].requires_grad and features[k].numel() > 0:
                    outputs.append(features[k])
                    output_grads.append(grad.to(features[k].dtype))
            if outputs:
                torch.autograd.backward(outputs, output_grads)
        _set_rng_state(state_after_pass_1)
        return loss.detach()


def accumulate_per_micro_batch(
    micro_batches: Sequence[Any],
    encode: EncodeFn,
    loss_fn: LossFn,
    *,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The original notebooks' accumulation: a separate loss per micro-batch, gradients averaged.

    Each pair only meets the negatives of its own micro-batch (1 at micro-batch 2).  Kept
    for comparisons (benchmarks, ablation), not as the training default.
    """
    if not micro_batches:
        raise ValueError("no micro-batches to accumulate")
    total = 0.0
    for micro_batch in micro_batches:
        loss = loss_fn(encode(micro_batch), [micro_batch]) / len(micro_batches)
        (scale_loss(loss) if scale_loss is not None else loss).backward()
        total += float(loss.detach())
    return torch.tensor(total)


def clamp_logit_scale_(logit_scale: torch.nn.Parameter, max_scale: float = 100.0) -> None:
    """Keep the learnt inverse temperature in [1/max_scale, max_scale] (CLIP clamps at 100)."""
    with torch.no_grad():
        logit_scale.clamp_(-math.log(max_scale), math.log(max_scale))
