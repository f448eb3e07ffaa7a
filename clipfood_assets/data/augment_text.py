"""Rule-based, meaning-preserving caption (recipe title) augmentation.

Operations, in order: simplification, synonym replacement, reordering, prefix add/remove,
case normalization, suffix; then truncation to ``max_length`` on a word boundary. Each op
fires with its probability and is recorded only if it actually changed the caption.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

import numpy as np

from clipfood_assets.data.augment_config import (
    AugmentationConfig,
    CaseConfig,
    PrefixConfig,
    SuffixConfig,
    SynonymConfig,
    TextAugmentationConfig,
    Toggle,
)
from clipfood_assets.data.trusted import normalize_caption

# --- reordering rule ------------------------------------------------------------------
# "Banana French Toast" -> "French Toast with Banana": move the first word behind "with".
# That is only right when the first word is an ingredient and the rest is the dish, which we
# cannot know; the rule therefore errs towards NOT firing. It fires only when:
#   1. the title has >= 3 words, all made of letters (no digits, punctuation, apostrophes);
#   2. it has no connective yet ("with", "and", "of", "in", ...);
#   3. the first word is not a descriptor (adjective, cooking method, nationality, colour, a
#      configured prefix or synonym-list word, or an -ed/-ly/-est/-ous/-ful word) and the second
#      is not a participle (-ed): "Baked Bean Soup", "Chicken Fried Steak" stay as they are,
#      while "Banana French Toast" (French describes the toast, not the banana) is reordered;
#   4. the first two words are not a known compound ("Peanut Butter Cookies", "Ice Cream Cake").
_CONNECTIVES = frozenset(
    "with and or in on of for a an the de del la le les au aux al alla con y n to from by without over under".split()
)
_DESCRIPTORS = frozenset(
    """
    easy quick simple best classic homemade traditional delicious tasty perfect ultimate famous favorite favourite
    my our mom moms grandma grandmas mini big little super extra healthy skinny lazy light low fat free
    baked fried grilled roasted smoked steamed stuffed glazed braised poached toasted pickled candied spiced
    raw fresh frozen hot cold warm iced sweet sour spicy savory savoury creamy crispy crunchy cheesy chewy fluffy
    zesty tangy yummy hearty smoky saucy meaty nutty fruity juicy sticky gooey buttery lemony garlicky rich moist
    tender soft thin thick whole instant slow fast one two three pan sheet skillet oven crock pot instant-pot
    french italian mexican chinese thai indian greek spanish german japanese korean southern cajun creole asian
    american english irish swedish russian moroccan hawaiian texas tex mex southwestern mediterranean cuban
    red green white black brown golden yellow purple
    """.split()
)
_DESCRIPTOR_ENDINGS = ("ed", "ly", "est", "ous", "ful")
_COMPOUNDS = frozenset(
    tuple(pair.split())
    for pair in (
        "peanut butter", "ice cream", "cream cheese", "sour cream", "chocolate chip", "hot dog", "brown sugar",
        "olive oil", "sweet potato", "green bean", "pork chop", "corn dog", "egg roll", "pot pie", "banana split",
        "coconut milk", "almond milk", "lemon curd", "sloppy joe", "cheese cake", "pound cake", "angel food",
        "devil food", "shepherd pie", "potato chip", "apple cider", "maple syrup", "corn bread", "short rib",
        "spring roll", "egg salad", "tuna salad", "chicken salad", "key lime", "pie crust", "bread pudding",
    )
)
_LETTERS_ONLY = re.compile(r"[^\W\d_]+")

Op = Callable[[str, Toggle, np.random.Generator, bool], "tuple[str, str] | None"]


def text_section(cfg: AugmentationConfig | TextAugmentationConfig) -> TextAugmentationConfig:
    """The text_augmentation block of a full config (or the block itself)."""
    return cfg.text_augmentation if isinstance(cfg, AugmentationConfig) else cfg


def _is_descriptor(word: str, extra: frozenset[str]) -> bool:
    word = word.lower()
    return word in _DESCRIPTORS or word in extra or word.endswith(_DESCRIPTOR_ENDINGS)


def reorder_title(caption: str, extra_descriptors: frozenset[str] = frozenset()) -> str | None:
    """"Banana French Toast" -> "French Toast with Banana", or None when the rule does not apply."""
    words = caption.split()
    if len(words) < 3 or not all(_LETTERS_ONLY.fullmatch(word) for word in words):
        return None
    lowered = [word.lower() for word in words]
    if any(word in _CONNECTIVES for word in lowered):
        return None
    if _is_descriptor(lowered[0], extra_descriptors) or lowered[1].endswith("ed"):
        return None
    if (lowered[0], lowered[1]) in _COMPOUNDS:
        return None
    joiner = "WITH" if caption.isupper() else "with"
    return f"{' '.join(words[1:])} {joiner} {words[0]}"


# --- individual operations ------------------------------------------------------------
_PARENTHETICAL = re.compile(r"\s*[\(\[][^\(\)\[\]]*[\)\]]")
_HASH_NUMBER = re.compile(r"(?:^|\s)#\s*\d+\b")
_NO_NUMBER = re.compile(r"\b[Nn][Oo]\.\s*\d+\b")
_LEADING_NUMBER = re.compile(r"^\s*\d+\s*[.)]\s+")
_EDGE_PUNCTUATION = " -\u2013\u2014:;,|/"


def simplify_title(caption: str) -> str:
    """Drop parenthetical/bracketed content and numbering such as "#2", "No. 3", leading "1."."""
    text = caption
    previous = None
    while previous != text:  # nested "(a (b))" needs more than one pass
        previous, text = text, _PARENTHETICAL.sub(" ", text)
    text = _HASH_NUMBER.sub(" ", text)
    text = _NO_NUMBER.sub(" ", text)
    text = _LEADING_NUMBER.sub("", text)
    return normalize_caption(text).strip(_EDGE_PUNCTUATION)


def _simplify(caption: str, _: Toggle, __: np.random.Generator, ___: bool) -> tuple[str, str] | None:
    simpler = simplify_title(caption)
    return (simpler, "simplify") if len(simpler) >= 3 and simpler != caption else None


@lru_cache(maxsize=32)
def _synonym_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def _match_case(template: str, replacement: str) -> str:
    if any(c.isalpha() for c in template) and template.upper() == template:
        return replacement.upper()
    if all(word[:1].isupper() for word in template.split()) and len(template.split()) > 1:
        return title_case(replacement)
    if template[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _synonym(caption: str, cfg: SynonymConfig, rng: np.random.Generator, _: bool) -> tuple[str, str] | None:
    table = {word.strip().lower(): choices for word, choices in cfg.synonyms.items()}
    if not table:
        return None
    pattern = _synonym_pattern(tuple(sorted(table)))

    def swap(match: re.Match[str]) -> str:
        choices = table[match.group(0).lower()]
        return _match_case(match.group(0), choices[int(rng.integers(len(choices)))])

    replaced = pattern.sub(swap, caption)
    return (replaced, "synonym") if replaced != caption else None


def _existing_prefix(caption: str, prefixes: list[str]) -> str | None:
    lowered = caption.lower()
    for prefix in sorted(prefixes, key=len, reverse=True):
        if lowered.startswith(prefix.lower() + " "):
            return caption[: len(prefix)]
    return None


def _prefix(caption: str, cfg: PrefixConfig, rng: np.random.Generator, forced: bool) -> tuple[str, str] | None:
    existing = _existing_prefix(caption, cfg.prefixes)
    if existing is not None:
        if forced or rng.random() < cfg.remove_probability:
            rest = caption[len(existing) :].strip(_EDGE_PUNCTUATION)
            return (rest, "prefix_remove") if len(rest) >= 3 else None
        return None  # never stack a second prefix
    prefix = cfg.prefixes[int(rng.integers(len(cfg.prefixes)))]
    return f"{prefix} {caption}", "prefix_add"


_FIRST_LETTER = re.compile(r"[^\W\d_]")


def title_case(caption: str) -> str:
    """Upper-case the first letter of every word, lower-case the rest ("(air" -> "(Air", "mom's" -> "Mom's")."""

    def one(word: str) -> str:
        match = _FIRST_LETTER.search(word)
        if match is None:
            return word.lower()
        at = match.start()
        return word[:at] + word[at].upper() + word[at + 1 :].lower()

    return " ".join(one(word) for word in caption.split(" "))


def _case(caption: str, cfg: CaseConfig, rng: np.random.Generator, _: bool) -> tuple[str, str] | None:
    converters = {"title": title_case, "lower": str.lower, "upper": str.upper}
    options = [(mode, converters[mode](caption)) for mode in dict.fromkeys(cfg.modes)]
    options = [(mode, text) for mode, text in options if text != caption]
    if not options:
        return None
    mode, text = options[int(rng.integers(len(options)))]
    return text, f"case_{mode}"


def _suffix(caption: str, cfg: SuffixConfig, rng: np.random.Generator, _: bool) -> tuple[str, str] | None:
    lowered = caption.lower()
    if any(lowered.endswith(suffix.lower()) for suffix in cfg.suffixes):
        return None  # never twice
    return f"{caption} {cfg.suffixes[int(rng.integers(len(cfg.suffixes)))]}", "suffix"


def _ops(section: TextAugmentationConfig) -> list[tuple[Toggle, Op]]:
    extra = frozenset(p.lower() for p in section.prefix.prefixes) | frozenset(
        w.lower() for w in section.synonym_replacement.synonyms
    )

    def reorder(caption: str, _: Toggle, __: np.random.Generator, ___: bool) -> tuple[str, str] | None:
        reordered = reorder_title(caption, extra)
        return (reordered, "reorder") if reordered else None

    return [
        (section.simplification, _simplify),
        (section.synonym_replacement, _synonym),
        (section.reorder, reorder),
        (section.prefix, _prefix),
        (section.case_normalization, _case),
        (section.suffix, _suffix),
    ]


def truncate_words(caption: str, max_length: int) -> str:
    """Cut to at most max_length characters, on a word boundary when there is one."""
    if len(caption) <= max_length:
        return caption
    head = caption[:max_length]
    if caption[max_length] != " " and " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(_EDGE_PUNCTUATION) or caption[:max_length]


def augment_caption(
    caption: str,
    cfg: AugmentationConfig | TextAugmentationConfig,
    rng: np.random.Generator,
    ensure_change: bool = True,
) -> tuple[str, list[str]]:
    """Augment one caption; return (new caption, names of the ops that changed it).

    With ``ensure_change`` (default), if no op fired or none changed anything, enabled ops are
    tried in random order (ignoring their probability) until one does, so an augmented caption
    differs from its source whenever some enabled op applies. Never returns an empty caption;
    raises ValueError for an empty input.
    """
    section = text_section(cfg)
    original = normalize_caption(caption)
    if not original:
        raise ValueError("cannot augment an empty caption")
    text, applied = original, []
    if section.enabled:
        ops = _ops(section)
        for op_cfg, op in ops:
            if op_cfg.enabled and rng.random() < op_cfg.probability:
                result = op(text, op_cfg, rng, False)
                if result is not None:
                    text, name = result
                    applied.append(name)
        if not applied and ensure_change:
            enabled = [op_and_cfg for op_and_cfg in ops if op_and_cfg[0].enabled]
            for index in rng.permutation(len(enabled)):
                op_cfg, op = enabled[int(index)]
                result = op(text, op_cfg, rng, True)
                if result is not None and result[0] != text:
                    text, name = result
                    applied.append(name)
                    break
    truncated = truncate_words(normalize_caption(text), section.max_length)
    if truncated != normalize_caption(text):
        applied.append("truncate")
    if not truncated.strip():  # defensive: every op refuses to produce an empty caption
        return truncate_words(original, section.max_length), []
    return truncated, applied
