"""The offline base model: a small CLIP saved in Hugging Face format.

No model hub is reachable, so the demo and the tests use a small CLIP built here and saved
with ``save_pretrained``; it loads through exactly the same code path as
``openai/clip-vit-base-patch32``::

    CLIPModel.from_pretrained(out_dir, use_safetensors=True)
    CLIPProcessor.from_pretrained(out_dir)

The tokenizer is a real byte-level BPE with CLIP's layout (``</w>`` word ends, the full byte
alphabet, lower-casing), learned on generic food captions and served by transformers'
``CLIPTokenizer`` (``tokenizers`` backend), so titles it never saw still get distinct ids.
``CLIPTokenizer()`` without vocab files would give a 2-token vocabulary that maps every word to
end-of-text: never build it that way.

An optional brief contrastive pre-training on generic synthetic pairs (drawn with another
seed than any demo trusted zone) gives a baseline that is better than chance but leaves
room for fine-tuning.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import BatchEncoding, CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

logger = logging.getLogger(__name__)

__all__ = [
    "BOS_TOKEN",
    "DEFAULT_PRETRAIN_RECIPES",
    "DEFAULT_PRETRAIN_STEPS",
    "EOS_TOKEN",
    "END_OF_WORD",
    "MODEL_MAX_LENGTH",
    "PretrainProgress",
    "build_base_model",
    "build_clip_config",
    "build_image_processor",
    "pretrain_contrastive",
    "train_tokenizer",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
# Pre-training that the demo uses: 200 steps on a small generic corpus (120 recipes, about 300
# photos) nearly converge on it, so the baseline (M0) is stable across seeds and several times
# better than chance on unseen recipes, yet has seen few dish x ingredient combinations and
# leaves clear room for LoRA. Measured on a 300-recipe demo (60 test recipes): M0 R@1 0.10-0.20
# (chance 0.017), LoRA r8 -> 0.30-0.35. Fewer steps on a larger corpus sits on the contrastive
# "cliff" where M0 swings from chance to 0.3 with the seed.
DEFAULT_PRETRAIN_STEPS = 200
DEFAULT_PRETRAIN_RECIPES = 120
# Offset between a build seed and the seed of its generic pre-training pairs, so pre-training
# never sees a demo trusted zone generated with the same seed.
PRETRAIN_DATA_SEED_OFFSET = 1000
TOKENIZER_CORPUS_SEED_OFFSET = 2000

# CLIP's split: special tokens, contractions, letter runs, single digits, punctuation runs.
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

PretrainProgress = Callable[[int, int, float], None]
"""Called after each pre-training step with (step, total_steps, loss)."""


# --------------------------------------------------------------------------- tokenizer


def _clip_pre_tokenizer() -> Tokenizer:
    """CLIP's normalisation and byte-level pre-tokenisation (the BPE model is filled in later)."""
    tokenizer = Tokenizer(models.BPE(unk_token=EOS_TOKEN, end_of_word_suffix=END_OF_WORD))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tokenizer


def _word_counts(captions: list[str]) -> Counter[tuple[str, ...]]:
    """Pre-tokenised words as byte symbols, the last one carrying ``</w>``, with counts."""
    clip = _clip_pre_tokenizer()
    counts: Counter[tuple[str, ...]] = Counter()
    for caption in captions:
        for word, _ in clip.pre_tokenizer.pre_tokenize_str(clip.normalizer.normalize_str(caption)):
            counts[(*word[:-1], word[-1] + END_OF_WORD)] += 1
    return counts


def _merge_word(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def _learn_merges(word_counts: Counter[tuple[str, ...]], n_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first, ties broken by the pair itself.

    Written out rather than using ``tokenizers.trainers.BpeTrainer``, whose tie-breaking
    follows symbol ids assigned in hash-map order: two runs on the same captions give
    different vocabularies, and a base model must be reproducible from its seed.
    """
    words = dict(word_counts)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        words = {_merge_word(word, best) if best[0] in word else word: count for word, count in words.items()}
    return merges


def _clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's layout: special tokens, every byte symbol bare, every byte symbol ending a word,
    then one token per merge. The full byte alphabet means no word ever becomes the unknown
    token (which is end-of-text here), whatever the text."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [BOS_TOKEN, EOS_TOKEN, *alphabet, *(symbol + END_OF_WORD for symbol in alphabet)]
    tokens += [left + right for left, right in merges]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def train_tokenizer(captions: list[str], vocab_size: int = 2048) -> CLIPTokenizer:
    """Train a CLIP-style byte-level BPE tokenizer on captions.

    Same normalisation (NFC, whitespace collapse, lower-case), pre-tokenisation and
    ``</w>`` suffix as OpenAI's CLIP tokenizer; ``<|startoftext|>`` (id 0) and
    ``<|endoftext|>`` (id 1, also the pad token, as in CLIP) wrap every sequence;
    ``model_max_length`` is 77. ``vocab_size`` is an upper bound: merges stop earlier when
    no pair occurs twice. Same captions, same tokenizer.
    """
    base_size = len(_clip_vocabulary([]))
    if vocab_size < base_size:
        raise ValueError(f"vocab_size must be >= {base_size} to hold the byte alphabet, got {vocab_size}")
    if not captions:
        raise ValueError("captions must not be empty")
    merges = _learn_merges(_word_counts(captions), n_merges=vocab_size - base_size)
    tokenizer = CLIPTokenizer(
        vocab=_clip_vocabulary(merges),
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    if tokenizer.eos_token_id == 2:
        # transformers' CLIP pools with argmax(input_ids) when eos_token_id == 2 (legacy).
        raise RuntimeError("eos token must not have id 2")
    return tokenizer


# --------------------------------------------------------------------------- model


def build_clip_config(
    tokenizer: CLIPTokenizer,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 64,
    patch_size: int = 8,
) -> CLIPConfig:
    """A small CLIP config whose special-token ids are the tokenizer's real ones.

    transformers' CLIP text tower pools at the first ``eos_token_id``; a wrong id pools at
    the wrong position and every title looks alike.
    """
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "projection_dim": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "projection_dim": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=hidden_size)


def build_image_processor(image_size: int = 64) -> CLIPImageProcessorPil:
    """CLIP's preprocessing at ``image_size``: bicubic resize of the shortest edge,
    centre crop, CLIP mean/std. The PIL backend, because torchvision is not installed."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def _pretraining_pairs(seed: int, n_recipes: int, image_size: int) -> tuple[list[str], list]:
    # Imported here: the generator is only needed when pre-training is asked for.
    from clipfood_assets.synthetic import generate_recipes, render_dish_picture

    recipes = generate_recipes(n_recipes, seed=seed)
    captions, images = [], []
    for recipe in recipes:
        for position in range(1, recipe["n_images"] + 1):
            captions.append(recipe["title_text_raw"])
            images.append(render_dish_picture(recipe, position, seed=seed, size=image_size))
    return captions, images


def pretrain_contrastive(
    model: CLIPModel,
    processor: CLIPProcessor,
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    n_recipes: int = DEFAULT_PRETRAIN_RECIPES,
    progress: PretrainProgress | None = None,
) -> list[float]:
    """Brief full-parameter pre-training with symmetric InfoNCE on generic synthetic pairs.

    Plain AdamW in fp32 on CPU. The pairs come from ``generate_recipes(n_recipes, seed)``;
    callers pass a seed that no demo trusted zone uses. Returns the loss of every step.
    """
    if steps <= 0:
        return []
    image_size = processor.image_processor.crop_size["height"]
    started = time.perf_counter()
    captions, images = _pretraining_pairs(seed, n_recipes, image_size)
    text = processor.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    logger.info("pre-training pairs ready: %d in %.1f s", len(captions), time.perf_counter() - started)

    previous_threads = torch.get_num_threads()
    # The tiny model's matrices gain nothing from more threads, and on cores shared with other
    # processes OpenMP spin-waiting made 2 threads ~20x slower than 1 (measured: 406 s vs 18 s).
    torch.set_num_threads(1)
    try:
        losses = _contrastive_steps(model, text, pixels, captions, steps, seed, batch_size, learning_rate, progress)
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    logger.info(
        "pre-training: %d steps, loss %.3f -> %.3f in %.1f s",
        steps,
        losses[0],
        losses[-1],
        time.perf_counter() - started,
    )
    return losses


def _contrastive_steps(
    model: CLIPModel,
    text: BatchEncoding,
    pixels: torch.Tensor,
    captions: list[str],
    steps: int,
    seed: int,
    batch_size: int,
    learning_rate: float,
    progress: PretrainProgress | None,
) -> list[float]:
    """AdamW steps on CLIPModel's own symmetric InfoNCE, one batch of distinct captions each."""
    generator = torch.Generator().manual_seed(seed)
    caption_of_pair = _caption_ids(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    model.train()
    losses: list[float] = []
    for step in range(1, steps + 1):
        batch = _distinct_caption_batch(caption_of_pair, batch_size, generator)
        output = model(
            input_ids=text["input_ids"][batch],
            attention_mask=text["attention_mask"][batch],
            pixel_values=_flip_some(pixels[batch], generator),
            return_loss=True,
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(output.loss.detach()))
        if progress is not None:
            progress(step, steps, losses[-1])
    return losses


def _caption_ids(captions: list[str]) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(caption, len(index)) for caption in captions]


def _distinct_caption_batch(caption_of_pair: list[int], batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Sample pairs whose captions differ: two photos of one recipe are not negatives."""
    chosen, seen = [], set()
    for position in torch.randperm(len(caption_of_pair), generator=generator).tolist():
        if caption_of_pair[position] not in seen:
            seen.add(caption_of_pair[position])
            chosen.append(position)
            if len(chosen) == batch_size:
                break
    return torch.tensor(chosen)


def _flip_some(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)


def _model_card(
    *,
    seed: int,
    config: CLIPConfig,
    tokenizer: CLIPTokenizer,
    pretrain_steps: int,
    losses: list[float],
) -> str:
    vision = config.vision_config
    text = config.text_config
    if losses:
        pretraining = (
            f"Pre-trained for {pretrain_steps} steps of symmetric InfoNCE (full-parameter AdamW, fp32, CPU) "
            f"on generic synthetic recipe pairs generated with seed {seed + PRETRAIN_DATA_SEED_OFFSET} "
            f"(`clipfood_assets.synthetic`); loss {losses[0]:.3f} -> {losses[-1]:.3f}."
        )
    else:
        pretraining = "Not pre-trained: weights are the seeded random initialisation."
    return f"""# clipfood base CLIP (synthetic, offline)

A small CLIP built locally by `clipfood_assets.modeling.base_model.build_base_model`, because no
model hub is reachable. It stands in for `openai/clip-vit-base-patch32` in the demo and the tests
and loads the same way:

```python
from transformers import CLIPModel, CLIPProcessor
model = CLIPModel.from_pretrained(path, use_safetensors=True)
processor = CLIPProcessor.from_pretrained(path)
```

It knows nothing about real food photos: it is only meaningful on the synthetic trusted zone of
`clipfood_assets.synthetic`.

| | |
|---|---|
| seed | {seed} |
| text tower | hidden {text.hidden_size}, {text.num_hidden_layers} layers, {text.num_attention_heads} heads |
| vision tower | hidden {vision.hidden_size}, {vision.num_hidden_layers} layers, {vision.num_attention_heads} heads, \
{vision.image_size} px images, {vision.patch_size} px patches |
| projection dim | {config.projection_dim} |
| tokenizer | byte-level BPE, {len(tokenizer)} tokens, bos {tokenizer.bos_token_id}, \
eos/pad {tokenizer.eos_token_id}, max length {tokenizer.model_max_length} |

Tokenizer: CLIP-style byte-level BPE (`</w>` word ends, full byte alphabet, lower-cased) learned on
`caption_corpus(seed={seed + TOKENIZER_CORPUS_SEED_OFFSET})`, generic captions from the generator's vocabulary,
not any trusted zone's titles; served by transformers' `CLIPTokenizer`.

{pretraining}

Weights: `model.safetensors` (no pickle).
"""


def build_base_model(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    image_size: int = 64,
    patch_size: int = 8,
    pretrain_steps: int = 0,
    pretrain_recipes: int = DEFAULT_PRETRAIN_RECIPES,
    progress: PretrainProgress | None = None,
) -> Path:
    """Build, optionally pre-train, and save the offline base CLIP into ``out_dir``.

    Writes ``config.json``, ``model.safetensors``, the tokenizer, the image processor and a
    ``README.md`` model card, so ``CLIPModel.from_pretrained(out_dir, use_safetensors=True)``
    and ``CLIPProcessor.from_pretrained(out_dir)`` load it. Same seed, same weights. The demo
    uses ``pretrain_steps=DEFAULT_PRETRAIN_STEPS``; 0 keeps the random initialisation.
    ``pretrain_recipes`` generic recipes (seed + 1000) feed the pre-training; ``progress`` is
    called after each pre-training step with (step, total_steps, loss).
    """
    from clipfood_assets.synthetic import caption_corpus

    if pretrain_steps < 0:
        raise ValueError(f"pretrain_steps must be >= 0, got {pretrain_steps}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(caption_corpus(seed=seed + TOKENIZER_CORPUS_SEED_OFFSET))
    config = build_clip_config(
        tokenizer, hidden_size=hidden_size, layers=layers, image_size=image_size, patch_size=patch_size
    )
    processor = CLIPProcessor(image_processor=build_image_processor(image_size), tokenizer=tokenizer)

    random.seed(seed)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    losses = pretrain_contrastive(
        model,
        processor,
        steps=pretrain_steps,
        seed=seed + PRETRAIN_DATA_SEED_OFFSET,
        n_recipes=pretrain_recipes,
        progress=progress,
    )
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        _model_card(seed=seed, config=config, tokenizer=tokenizer, pretrain_steps=pretrain_steps, losses=losses),
        encoding="utf-8",
    )
    logger.info("base model saved to %s", out_dir)
    return out_dir
