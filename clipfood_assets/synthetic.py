"""Synthetic trusted zone: recipes plus food photos whose content follows the title.

No real recipe data or model hub is reachable here, so the demo and the tests run on a
generated trusted zone. ``zone_format="adsdb"`` writes exactly the real (ADSDB) trusted zone's
shape: ``images/image$<project>$<timestamp>$<md5>__<recipeId>_<n>.jpg`` from position 0 and
recipes.jsonl rows with raw/clean text fields and the upstream ``*__from_layer1`` fields;
``"simple"`` the original ``images/<slug>__<recipeId>_<position>.jpg`` layout.

The pictures are drawn so that the title/image relation is *compositional* and therefore
learnable across recipes: the dish decides the vessel and layout (bowl of soup, round pizza
with slice lines, stacked pancakes, tall smoothie glass…), the main ingredient decides the
colours and the shape of the toppings (red circles for tomato, yellow crescents for
banana…), and some descriptors add cues (spicy: chili flecks, creamy: white swirl). An unseen
combination such as "Creamy Salmon Tacos" is still recognisable from parts seen elsewhere.
Every position of a recipe is a different photo of the same dish (jitter in placement,
scale, rotation, background, lighting and noise), so a model has to generalise.

Everything is deterministic for a given seed: same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DISHES",
    "INGREDIENTS",
    "DESCRIPTORS",
    "DishComponents",
    "ZONE_FORMATS",
    "adsdb_clean",
    "adsdb_image_key",
    "adsdb_recipes",
    "caption_corpus",
    "clean_title",
    "dish_components",
    "generate_recipes",
    "image_key",
    "render_dish_image",
    "render_dish_picture",
    "slugify",
    "synthetic_trusted_zone",
    "scale_recipe",
    "scale_trusted_zone",
    "with_comment",
]

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Ingredient:
    """A main ingredient: its colours and the topping shape that makes it visible."""

    name: str
    colour: RGB  # topping colour
    accent: RGB  # second colour of the topping (pit, stem, stripe…)
    shape: str  # topping shape drawn by ``_draw_topping``
    quantity: str  # how it appears in an ingredient list


@dataclass(frozen=True)
class Dish:
    """A dish type: its display name and the layout drawn by its renderer."""

    name: str
    layout: str  # key into ``_DISH_RENDERERS``
    step: str  # a cooking step that reads right for this dish


INGREDIENTS: tuple[Ingredient, ...] = (
    Ingredient("Banana", (244, 214, 60), (120, 90, 30), "crescent", "2 ripe bananas, sliced"),
    Ingredient("Chicken", (214, 170, 112), (170, 120, 70), "chunk", "500 g chicken thighs, diced"),
    Ingredient("Tomato", (214, 40, 36), (120, 160, 60), "circle", "4 ripe tomatoes, chopped"),
    Ingredient("Chocolate", (88, 50, 28), (60, 32, 18), "square", "150 g dark chocolate, chopped"),
    Ingredient("Spinach", (40, 110, 40), (25, 70, 25), "leaf", "2 cups fresh spinach"),
    Ingredient("Salmon", (250, 128, 96), (255, 225, 210), "striped", "2 salmon fillets"),
    Ingredient("Mushroom", (150, 132, 118), (230, 220, 205), "mushroom", "250 g mushrooms, sliced"),
    Ingredient("Lemon", (252, 240, 120), (255, 255, 220), "wheel", "1 lemon, zest and juice"),
    Ingredient("Strawberry", (220, 30, 70), (60, 150, 50), "berry", "300 g strawberries, hulled"),
    Ingredient("Blueberry", (50, 50, 130), (120, 120, 190), "dot", "1 cup blueberries"),
    Ingredient("Beef", (110, 40, 30), (70, 25, 20), "chunk", "500 g beef, cubed"),
    Ingredient("Shrimp", (255, 150, 150), (230, 90, 70), "arc", "300 g shrimp, peeled"),
    Ingredient("Avocado", (150, 200, 70), (110, 70, 30), "pit", "2 avocados, diced"),
    Ingredient("Pumpkin", (240, 130, 20), (200, 90, 10), "cube", "500 g pumpkin, cubed"),
    Ingredient("Broccoli", (30, 140, 60), (120, 180, 90), "floret", "1 head broccoli, in florets"),
    Ingredient("Egg", (250, 250, 245), (250, 190, 20), "egg", "4 large eggs"),
    Ingredient("Coconut", (245, 240, 230), (140, 100, 70), "flake", "1 cup shredded coconut"),
    Ingredient("Cherry", (130, 10, 30), (70, 120, 40), "cherry", "2 cups pitted cherries"),
    Ingredient("Carrot", (245, 120, 30), (60, 140, 40), "stick", "3 carrots, sliced"),
    Ingredient("Cheese", (250, 200, 50), (230, 160, 30), "wedge", "1 cup grated cheddar cheese"),
)

DISHES: tuple[Dish, ...] = (
    Dish("Soup", "soup", "Simmer everything in stock for 20 minutes, then season."),
    Dish("Curry", "curry", "Stir in the curry paste and simmer until thick; serve with rice."),
    Dish("Stew", "stew", "Brown, then braise slowly in the pot for an hour."),
    Dish("Salad", "salad", "Toss everything with the dressing just before serving."),
    Dish("Cake", "cake", "Bake at 180 C for 35 minutes, cool and slice."),
    Dish("Pie", "pie", "Fill the pastry case, cover with a lattice and bake until golden."),
    Dish("Pizza", "pizza", "Spread the dough, add the toppings and bake at 250 C."),
    Dish("Pasta", "pasta", "Cook the pasta al dente and toss it in the sauce."),
    Dish("French Toast", "toast", "Dip the bread in egg and fry until golden on both sides."),
    Dish("Pancakes", "pancakes", "Pour the batter onto a hot griddle and flip once."),
    Dish("Tacos", "tacos", "Warm the tortillas and fill them generously."),
    Dish("Burger", "burger", "Grill the patties and build the burgers in toasted buns."),
    Dish("Cookies", "cookies", "Scoop onto a tray and bake for 12 minutes."),
    Dish("Smoothie", "smoothie", "Blend everything with ice until smooth and pour into glasses."),
    Dish("Muffins", "muffins", "Fill the muffin cups and bake for 20 minutes."),
    Dish("Skewers", "skewers", "Thread onto skewers and grill, turning often."),
    Dish("Sandwich", "sandwich", "Layer the filling between the bread and cut diagonally."),
    Dish("Omelette", "omelette", "Cook the eggs gently, add the filling and fold."),
    Dish("Ice Cream", "icecream", "Churn the base and freeze until scoopable."),
    Dish("Bread", "bread", "Knead, let rise, shape into a loaf and bake."),
)

# Descriptors with a visual cue are drawn (see ``_draw_descriptor_cue``); the others only
# change the words, as real titles do ("Classic", "Homemade" say nothing visible).
DESCRIPTORS: tuple[str, ...] = (
    "Spicy",
    "Creamy",
    "Cheesy",
    "Herbed",
    "Grilled",
    "Glazed",
    "Classic",
    "Homemade",
    "Easy",
    "Quick",
    "Rustic",
    "Healthy",
    "Grandma's",
    "Best",
)
_SUFFIXES: tuple[str, ...] = (" (Easy)", " (Quick)", " (Make Ahead)", " (Gluten-Free)", " II", " Recipe")
_PANTRY: tuple[str, ...] = (
    "1 tbsp olive oil",
    "2 tbsp butter",
    "1 onion, finely chopped",
    "2 cloves garlic, minced",
    "1 tsp salt",
    "1/2 tsp black pepper",
    "1 cup milk",
    "2 cups flour",
    "1/2 cup sugar",
    "1 tsp baking powder",
    "500 ml vegetable stock",
    "1 tbsp fresh herbs, chopped",
)


@dataclass(frozen=True)
class DishComponents:
    """What a title says about the picture: dish, main ingredients and descriptors."""

    dish: Dish
    ingredients: tuple[Ingredient, ...]
    descriptors: tuple[str, ...]


def clean_title(title: str) -> str:
    """Lower-case a title and strip punctuation ("Grandma's Pie (Easy)" -> "grandmas pie easy")."""
    text = title.lower().replace("'", "")
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return " ".join(text.split())


def slugify(title: str) -> str:
    """Key-safe slug of a title: lowercase ascii letters, digits and single hyphens."""
    slug = re.sub(r"[^a-z0-9]+", "-", clean_title(title)).strip("-")
    return slug or "recipe"


# Vocabulary phrases as they appear in a cleaned title ("Grandma's" -> "grandmas").
_DISH_BY_WORDS = {clean_title(d.name): d for d in DISHES}
_INGREDIENT_BY_WORDS = {clean_title(i.name): i for i in INGREDIENTS}
_DESCRIPTOR_BY_WORDS = {clean_title(d): d for d in DESCRIPTORS}


def image_key(recipe: dict, position: int) -> str:
    """Trusted-zone key of a recipe photo: ``images/<slug>__<recipeId>_<position>.jpg``."""
    return f"images/{slugify(recipe['title_text_raw'])}__{recipe['id']}_{position}.jpg"


def _stable_seed(*parts: object) -> int:
    # hash() is salted per process; a digest keeps images identical across runs.
    digest = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def dish_components(title: str) -> DishComponents:
    """Read dish, ingredients and descriptors off a title by matching the vocabulary.

    Titles outside the vocabulary still map to a fixed (hash-chosen) dish and ingredient,
    so any title renders deterministically.
    """
    words = f" {clean_title(title)} "
    found: list[tuple[int, object]] = []
    for table in (_DISH_BY_WORDS, _INGREDIENT_BY_WORDS, _DESCRIPTOR_BY_WORDS):
        for phrase, item in table.items():
            at = words.find(f" {phrase} ")
            if at >= 0:
                found.append((at, item))
    found.sort(key=lambda pair: pair[0])
    dishes = [item for _, item in found if isinstance(item, Dish)]
    ingredients = tuple(item for _, item in found if isinstance(item, Ingredient))
    descriptors = tuple(item for _, item in found if isinstance(item, str))
    fallback = random.Random(_stable_seed("components", words))
    dish = dishes[-1] if dishes else fallback.choice(DISHES)
    if not ingredients:
        ingredients = (fallback.choice(INGREDIENTS),)
    return DishComponents(dish=dish, ingredients=ingredients[:2], descriptors=descriptors)


# --------------------------------------------------------------------------- recipes


def _compose_title(
    rng: random.Random,
    dishes: Sequence[Dish] = DISHES,
    ingredients: Sequence[Ingredient] = INGREDIENTS,
) -> str:
    dish = rng.choice(dishes)
    main = rng.choice(ingredients)
    second = rng.choice([i for i in ingredients if i is not main])
    descriptor = rng.choice(DESCRIPTORS)
    pattern = rng.random()
    if pattern < 0.45:
        title = f"{descriptor} {main.name} {dish.name}"
    elif pattern < 0.65:
        title = f"{main.name} {dish.name}"
    elif pattern < 0.85:
        title = f"{main.name} and {second.name} {dish.name}"
    else:
        title = f"{dish.name} with {main.name}"
    if rng.random() < 0.15:
        title += rng.choice(_SUFFIXES)
    return title


def _ingredient_list(rng: random.Random, components: DishComponents) -> list[str]:
    pantry = rng.sample(_PANTRY, k=rng.randint(3, 6))
    return [i.quantity for i in components.ingredients] + pantry


def _instruction_list(rng: random.Random, components: DishComponents) -> list[str]:
    main = components.ingredients[0].name.lower()
    steps = [
        f"Prepare the {main} and measure the other ingredients.",
        components.dish.step,
        f"Serve the {components.dish.name.lower()} warm or at room temperature.",
    ]
    if rng.random() < 0.5:
        steps.insert(1, "Heat the oil in a large pan over medium heat.")
    return steps


def generate_recipes(
    n_recipes: int,
    seed: int,
    *,
    dishes: Sequence[Dish] = DISHES,
    ingredients: Sequence[Ingredient] = INGREDIENTS,
) -> list[dict]:
    """Generate trusted-zone recipe rows.

    Each row has ``id`` (10 unique lowercase hex chars), ``title_text_raw``,
    ``title_text_clean``, ``ingredients``, ``instructions`` and ``n_images`` (1-4, how many
    photos the trusted zone holds for it). Titles are mostly unique; dish types repeat.
    ``dishes``/``ingredients`` restrict the vocabulary (e.g. for a base model's generic
    pre-training corpus that does not cover every food).
    """
    if n_recipes < 0:
        raise ValueError(f"n_recipes must be >= 0, got {n_recipes}")
    if not dishes or len(ingredients) < 2:
        raise ValueError("need at least one dish and two ingredients")
    rng = random.Random(_stable_seed("recipes", seed))
    seen_ids: set[str] = set()
    seen_titles: set[str] = set()
    recipes: list[dict] = []
    while len(recipes) < n_recipes:
        recipe_id = f"{rng.getrandbits(40):010x}"
        title = _compose_title(rng, dishes, ingredients)
        # A few duplicate titles are realistic; many would make recipe-level retrieval moot.
        if recipe_id in seen_ids or (title in seen_titles and rng.random() < 0.9):
            continue
        seen_ids.add(recipe_id)
        seen_titles.add(title)
        components = dish_components(title)
        recipes.append(
            {
                "id": recipe_id,
                "title_text_raw": title,
                "title_text_clean": clean_title(title),
                "ingredients": _ingredient_list(rng, components),
                "instructions": _instruction_list(rng, components),
                "n_images": rng.choice((1, 2, 2, 3, 3, 4)),
            }
        )
    return recipes


_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{title}",
    "{title}",
    "a photo of {lower}",
    "homemade {lower} recipe",
    "a plate of {lower}",
    "{lower} served on a table",
)


def caption_corpus(seed: int = 0, n: int = 5000) -> list[str]:
    """Generic food captions from the shared vocabulary, for training a tokenizer.

    Drawn with a seed stream distinct from ``generate_recipes`` so a tokenizer trained on
    it does not depend on any trusted zone's exact titles.
    """
    rng = random.Random(_stable_seed("captions", seed))
    captions = []
    for _ in range(n):
        title = _compose_title(rng)
        template = rng.choice(_CAPTION_TEMPLATES)
        captions.append(template.format(title=title, lower=title.lower()))
    return captions


# --------------------------------------------------------------------------- drawing helpers

_CANVAS = 256  # drawn at 256 px then resized: 4x fewer pixels to fill, photo-like softness
Point = tuple[float, float]
_WHITE: RGB = (250, 248, 240)
_TOPPING_SCALE = 1.25


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    """Blend colour ``a`` towards ``b`` by ``t`` (0: a, 1: b)."""
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(max(0, min(255, int(c * factor))) for c in colour)  # type: ignore[return-value]


def _rotated(points: list[Point], cx: float, cy: float, angle: float) -> list[Point]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _box(x: float, y: float, rx: float, ry: float | None = None) -> tuple[float, float, float, float]:
    ry = rx if ry is None else ry
    return (x - rx, y - ry, x + rx, y + ry)


def _scatter(rng: random.Random, n: int, cx: float, cy: float, rx: float, ry: float | None = None) -> list[Point]:
    """``n`` points uniformly inside an ellipse."""
    ry = rx if ry is None else ry
    points = []
    for _ in range(n):
        radius, angle = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        points.append((cx + rx * radius * math.cos(angle), cy + ry * radius * math.sin(angle)))
    return points


# Each topping shape draws one piece at (x, y), radius r, in colour c with accent a, turned by
# ``turn``; the shapes below take exactly these arguments (typed here, once).
_Shape = Callable[[ImageDraw.ImageDraw, random.Random, float, float, float, RGB, RGB, float], None]


def _crescent(draw, rng, x, y, r, c, a, turn) -> None:
    start = math.degrees(turn)
    draw.arc(_box(x, y, r), start, start + 170, fill=c, width=max(2, int(r * 0.6)))


def _chunk(draw, rng, x, y, r, c, a, turn) -> None:
    corners = [(r * rng.uniform(0.7, 1.1) * math.cos(t), r * rng.uniform(0.7, 1.1) * math.sin(t))
               for t in (k * 2 * math.pi / 6 for k in range(6))]
    draw.polygon(_rotated(corners, x, y, turn), fill=c, outline=a)


def _square(draw, rng, x, y, r, c, a, turn) -> None:
    corners = [(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)]
    draw.polygon(_rotated(corners, x, y, turn), fill=c, outline=a)


def _circle(draw, rng, x, y, r, c, a, turn) -> None:
    draw.ellipse(_box(x, y, r), fill=c, outline=_shade(c, 0.75))
    for dx, dy in ((-0.35, -0.2), (0.3, -0.25), (0.0, 0.35)):
        draw.ellipse(_box(x + dx * r, y + dy * r, r * 0.16), fill=(250, 200, 120))


def _leaf(draw, rng, x, y, r, c, a, turn) -> None:
    tip = _rotated([(-r * 1.3, 0), (0, -r * 0.55), (r * 1.3, 0), (0, r * 0.55)], x, y, turn)
    draw.polygon(tip, fill=c)
    draw.line([tip[0], tip[2]], fill=a, width=1)


def _striped(draw, rng, x, y, r, c, a, turn) -> None:
    fillet = [(-r * 1.2, -r * 0.6), (r * 1.2, -r * 0.6), (r * 1.2, r * 0.6), (-r * 1.2, r * 0.6)]
    draw.polygon(_rotated(fillet, x, y, turn), fill=c)
    for offset in (-0.8 * r, 0.0, 0.8 * r):
        stripe = _rotated([(offset, -r * 0.6), (offset + r * 0.3, r * 0.6)], x, y, turn)
        draw.line(stripe, fill=a, width=max(1, int(r * 0.18)))


def _mushroom(draw, rng, x, y, r, c, a, turn) -> None:
    draw.rectangle((x - r * 0.25, y - r * 0.1, x + r * 0.25, y + r * 0.8), fill=a)
    draw.pieslice(_box(x, y, r, r * 0.8), 180, 360, fill=c, outline=_shade(c, 0.7))


def _wheel(draw, rng, x, y, r, c, a, turn) -> None:
    draw.ellipse(_box(x, y, r), fill=c, outline=_shade(c, 0.85), width=max(1, int(r * 0.2)))
    for k in range(4):
        angle = turn + k * math.pi / 4
        draw.line([(x - r * 0.8 * math.cos(angle), y - r * 0.8 * math.sin(angle)),
                   (x + r * 0.8 * math.cos(angle), y + r * 0.8 * math.sin(angle))], fill=a, width=1)


def _berry(draw, rng, x, y, r, c, a, turn) -> None:
    draw.polygon(_rotated([(-r * 0.8, -r * 0.5), (r * 0.8, -r * 0.5), (0, r * 1.0)], x, y, turn * 0.2), fill=c)
    draw.ellipse(_box(x, y - r * 0.55, r * 0.45, r * 0.22), fill=a)


def _dot(draw, rng, x, y, r, c, a, turn) -> None:
    for dx, dy in ((0, 0), (0.9, 0.3), (-0.5, 0.8)):
        draw.ellipse(_box(x + dx * r * 0.7, y + dy * r * 0.7, r * 0.5), fill=c, outline=a)


def _arc(draw, rng, x, y, r, c, a, turn) -> None:
    start = math.degrees(turn)
    draw.arc(_box(x, y, r), start, start + 250, fill=c, width=max(2, int(r * 0.55)))
    draw.arc(_box(x, y, r * 0.75), start + 30, start + 220, fill=a, width=1)


def _pit(draw, rng, x, y, r, c, a, turn) -> None:
    draw.ellipse(_box(x, y, r * 0.8, r * 1.1), fill=c, outline=(60, 110, 30))
    draw.ellipse(_box(x, y + r * 0.15, r * 0.38), fill=a)


def _floret(draw, rng, x, y, r, c, a, turn) -> None:
    draw.line([(x, y), (x, y + r)], fill=a, width=max(2, int(r * 0.35)))
    for dx, dy in ((-0.45, -0.1), (0.45, -0.1), (0, -0.5), (0, 0.15)):
        draw.ellipse(_box(x + dx * r, y + dy * r, r * 0.45), fill=c)


def _egg(draw, rng, x, y, r, c, a, turn) -> None:
    draw.ellipse(_box(x, y, r * 1.1, r * 0.95), fill=c)
    draw.ellipse(_box(x, y, r * 0.45), fill=a)


def _flake(draw, rng, x, y, r, c, a, turn) -> None:
    for _ in range(3):
        fx, fy, t = x + rng.uniform(-r, r), y + rng.uniform(-r, r), rng.uniform(0, math.pi)
        draw.line(_rotated([(-r * 0.5, 0), (r * 0.5, 0)], fx, fy, t), fill=c, width=max(2, int(r * 0.25)))


def _cherry(draw, rng, x, y, r, c, a, turn) -> None:
    draw.line([(x, y), (x + r * 0.5, y - r * 1.3)], fill=a, width=max(1, int(r * 0.15)))
    draw.ellipse(_box(x, y, r * 0.75), fill=c, outline=_shade(c, 0.7))


def _stick(draw, rng, x, y, r, c, a, turn) -> None:
    draw.line(_rotated([(-r * 1.3, 0), (r * 1.3, 0)], x, y, turn), fill=c, width=max(2, int(r * 0.45)))


def _wedge(draw, rng, x, y, r, c, a, turn) -> None:
    draw.polygon(_rotated([(-r, r * 0.7), (r, r * 0.7), (0, -r)], x, y, turn), fill=c, outline=a)
    draw.ellipse(_box(x, y + r * 0.2, r * 0.18), fill=a)


def _plain(draw, rng, x, y, r, c, a, turn) -> None:
    draw.ellipse(_box(x, y, r), fill=c)


_TOPPING_SHAPES: dict[str, _Shape] = {
    "crescent": _crescent,
    "chunk": _chunk,
    "cube": _square,
    "square": _square,
    "circle": _circle,
    "leaf": _leaf,
    "striped": _striped,
    "mushroom": _mushroom,
    "wheel": _wheel,
    "berry": _berry,
    "dot": _dot,
    "arc": _arc,
    "pit": _pit,
    "floret": _floret,
    "egg": _egg,
    "flake": _flake,
    "cherry": _cherry,
    "stick": _stick,
    "wedge": _wedge,
}


def _draw_topping(draw: ImageDraw.ImageDraw, rng: random.Random, ing: Ingredient, x: float, y: float, r: float) -> None:
    """One piece of an ingredient; its shape and colours say which ingredient it is."""
    turn = rng.uniform(0, 2 * math.pi)  # drawn for every shape, so each piece uses the rng alike
    # _plain: a shape outside the table (every vocabulary shape is in it)
    _TOPPING_SHAPES.get(ing.shape, _plain)(draw, rng, x, y, r, ing.colour, ing.accent, turn)


def _toppings(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, points: list[Point], r: float) -> None:
    """Toppings at ``points``: mostly the main ingredient, some of the second one."""
    for k, (x, y) in enumerate(points):
        ing = comp.ingredients[1] if len(comp.ingredients) > 1 and k % 3 == 2 else comp.ingredients[0]
        # Pieces are drawn larger than life so they survive the model's 64 px input.
        _draw_topping(draw, rng, ing, x, y, r * _TOPPING_SCALE * rng.uniform(0.85, 1.15))


def _base_colour(comp: DishComponents, towards: RGB, t: float) -> RGB:
    return _mix(comp.ingredients[0].colour, towards, t)


# --------------------------------------------------------------------------- dish layouts
# Each renderer draws the dish centred at (cx, cy) with overall radius R on a transparent
# layer. ``rng`` is the recipe's own stream: every photo of a recipe shows the same dish.
# Each returns the ellipse (cx, cy, rx, ry) where descriptor cues belong.

Ellipse = tuple[float, float, float, float]


def _plate(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, r: float) -> None:
    rim = rng.choice([(245, 245, 240), (235, 232, 220), (205, 220, 235), (60, 60, 66)])
    draw.ellipse(_box(cx, cy, r), fill=rim, outline=_shade(rim, 0.8), width=2)
    draw.ellipse(_box(cx, cy, r * 0.78), fill=_shade(rim, 0.95))


def _soup(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    bowl = rng.choice([(245, 245, 240), (40, 90, 160), (190, 90, 50), (230, 220, 190)])
    draw.ellipse(_box(cx, cy, R), fill=bowl, outline=_shade(bowl, 0.7), width=3)
    draw.ellipse(_box(cx, cy, R * 0.8), fill=_base_colour(comp, (240, 225, 190), 0.3))
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(5, 7), cx, cy, R * 0.55), R * 0.13)
    return cx, cy, R * 0.65, R * 0.65


def _curry(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    bowl = rng.choice([(245, 245, 240), (30, 30, 35), (120, 70, 40)])
    draw.ellipse(_box(cx, cy, R * 1.1, R * 0.8), fill=bowl, outline=_shade(bowl, 0.7), width=3)
    draw.ellipse(_box(cx - R * 0.2, cy, R * 0.75, R * 0.62), fill=_base_colour(comp, (210, 130, 30), 0.35))
    draw.ellipse(_box(cx + R * 0.55, cy, R * 0.38, R * 0.5), fill=(248, 246, 236))  # rice
    for x, y in _scatter(rng, 12, cx + R * 0.55, cy, R * 0.3, R * 0.42):
        draw.line([(x, y), (x + 3, y + 1)], fill=(225, 222, 210), width=1)
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(4, 6), cx - R * 0.25, cy, R * 0.45, R * 0.4), R * 0.13)
    return cx - R * 0.2, cy, R * 0.6, R * 0.5


def _stew(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    pot = (55, 55, 60)
    for side in (-1, 1):
        draw.rounded_rectangle(_box(cx + side * R * 1.02, cy, R * 0.22, R * 0.1), radius=3, fill=pot)
    draw.ellipse(_box(cx, cy, R), fill=pot, outline=(30, 30, 32), width=3)
    draw.ellipse(_box(cx, cy, R * 0.84), fill=_base_colour(comp, (110, 60, 30), 0.55))
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(9, 12), cx, cy, R * 0.65), R * 0.14)
    return cx, cy, R * 0.7, R * 0.7


def _salad(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    bowl = rng.choice([(175, 125, 75), (245, 245, 240), (150, 200, 220)])
    draw.ellipse(_box(cx, cy, R), fill=bowl, outline=_shade(bowl, 0.7), width=3)
    draw.ellipse(_box(cx, cy, R * 0.85), fill=(120, 175, 70))
    greens = Ingredient("lettuce", (140, 200, 80), (90, 150, 50), "leaf", "")
    for x, y in _scatter(rng, 14, cx, cy, R * 0.7):
        _draw_topping(draw, rng, greens, x, y, R * 0.16)
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(6, 8), cx, cy, R * 0.6), R * 0.14)
    return cx, cy, R * 0.7, R * 0.7


def _cake(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy + R * 0.25, R * 0.95)
    sponge = _base_colour(comp, (240, 215, 160), 0.45)
    frosting = _base_colour(comp, _WHITE, 0.15)
    left, right, top, bottom = cx - R * 0.75, cx + R * 0.75, cy - R * 0.25, cy + R * 0.45
    # Side of a wedge, with a triangular top face behind it.
    draw.polygon([(left, top), (right, top), (cx + R * 0.25, top - R * 0.45)], fill=frosting)
    band = (bottom - top) / 5
    for k in range(5):
        draw.rectangle((left, top + k * band, right, top + (k + 1) * band), fill=sponge if k % 2 == 0 else _WHITE)
    draw.rectangle((left, top - band * 0.6, right, top), fill=frosting)
    _toppings(draw, rng, comp, [(left + (k + 0.5) * (right - left) / 4, top - R * 0.18) for k in range(4)], R * 0.12)
    return cx, cy, R * 0.7, R * 0.35


def _pie(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    crust = (215, 160, 80)
    draw.ellipse(_box(cx, cy, R), fill=crust, outline=_shade(crust, 0.75), width=3)
    draw.ellipse(_box(cx, cy, R * 0.82), fill=_base_colour(comp, (150, 60, 40), 0.2))
    _toppings(draw, rng, comp, _scatter(rng, 5, cx, cy, R * 0.6), R * 0.12)
    strip = max(3, int(R * 0.1))
    for k in (-2, -1, 0, 1, 2):
        offset = k * R * 0.3
        half = math.sqrt(max(0.0, (R * 0.82) ** 2 - offset**2))
        draw.line([(cx + offset, cy - half), (cx + offset, cy + half)], fill=crust, width=strip)
        draw.line([(cx - half, cy + offset), (cx + half, cy + offset)], fill=crust, width=strip)
    return cx, cy, R * 0.7, R * 0.7


def _pizza(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    draw.ellipse(_box(cx, cy, R), fill=(220, 165, 95), outline=(170, 110, 50), width=2)
    draw.ellipse(_box(cx, cy, R * 0.86), fill=(200, 60, 35))
    draw.ellipse(_box(cx, cy, R * 0.8), fill=(250, 225, 150))
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(9, 12), cx, cy, R * 0.68), R * 0.12)
    for k in range(rng.choice((6, 8))):
        angle = k * 2 * math.pi / 8 + 0.2
        draw.line([(cx, cy), (cx + R * math.cos(angle), cy + R * math.sin(angle))], fill=(150, 100, 50), width=2)
    return cx, cy, R * 0.75, R * 0.75


def _pasta(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy, R)
    noodle = (240, 210, 120)
    for x, y in _scatter(rng, 16, cx, cy, R * 0.55):
        start = rng.uniform(0, 360)
        draw.arc(_box(x, y, R * 0.22), start, start + 200, fill=noodle, width=3)
    draw.ellipse(_box(cx, cy, R * 0.33), fill=_base_colour(comp, (190, 60, 30), 0.25))
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(4, 6), cx, cy, R * 0.4), R * 0.13)
    return cx, cy, R * 0.5, R * 0.5


def _toast(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy, R)
    for k in range(3):
        x, y = cx + (k - 1) * R * 0.12, cy + (1 - k) * R * 0.12
        corners = [(-R * 0.45, -R * 0.45), (R * 0.45, -R * 0.45), (R * 0.45, R * 0.45), (-R * 0.45, R * 0.45)]
        draw.polygon(_rotated(corners, x, y, (k - 1) * 0.25), fill=(205, 145, 65), outline=(140, 85, 30))
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(4, 6), cx + R * 0.12, cy - R * 0.12, R * 0.3), R * 0.13)
    for x, y in _scatter(rng, 10, cx, cy, R * 0.5):
        draw.point((x, y), fill=_WHITE)  # powdered sugar
    return cx + R * 0.12, cy - R * 0.12, R * 0.4, R * 0.4


def _pancakes(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy + R * 0.3, R * 0.95)
    for k in range(5):
        y = cy + R * 0.35 - k * R * 0.13
        draw.ellipse(_box(cx, y, R * 0.7, R * 0.3), fill=(225, 175, 100), outline=(165, 110, 50), width=2)
    top = cy + R * 0.35 - 4 * R * 0.13
    draw.ellipse(_box(cx, top, R * 0.6, R * 0.22), fill=_base_colour(comp, (160, 90, 30), 0.5))
    _toppings(draw, rng, comp, _scatter(rng, rng.randint(4, 5), cx, top, R * 0.45, R * 0.14), R * 0.12)
    return cx, top, R * 0.55, R * 0.2


def _tacos(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    for k in (-1, 0, 1):
        x, y = cx + k * R * 0.6, cy + abs(k) * R * 0.1
        draw.pieslice(_box(x, y, R * 0.42), 0, 180, fill=(235, 200, 100), outline=(190, 150, 60), width=2)
        draw.rectangle((x - R * 0.38, y - R * 0.1, x + R * 0.38, y + R * 0.04), fill=_base_colour(comp, (90, 150, 60), 0.2))
        _toppings(draw, rng, comp, [(x - R * 0.2, y - R * 0.08), (x + R * 0.2, y - R * 0.06)], R * 0.12)
    return cx, cy, R * 0.9, R * 0.2


def _burger(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    w = R * 0.85
    draw.rounded_rectangle((cx - w, cy + R * 0.3, cx + w, cy + R * 0.55), radius=int(R * 0.1), fill=(210, 150, 70))
    draw.rounded_rectangle((cx - w * 1.02, cy + R * 0.1, cx + w * 1.02, cy + R * 0.32), radius=int(R * 0.08), fill=(90, 50, 30))
    draw.rectangle((cx - w, cy - R * 0.08, cx + w, cy + R * 0.12), fill=_base_colour(comp, _WHITE, 0.1))
    _toppings(draw, rng, comp, [(cx + k * w * 0.4, cy + R * 0.02) for k in (-2, -1, 0, 1, 2)], R * 0.13)
    draw.rectangle((cx - w * 1.05, cy - R * 0.16, cx + w * 1.05, cy - R * 0.08), fill=(110, 180, 60))
    draw.pieslice((cx - w, cy - R * 0.85, cx + w, cy + R * 0.2), 180, 360, fill=(215, 145, 60), outline=(170, 100, 40))
    for x, y in _scatter(rng, 10, cx, cy - R * 0.45, w * 0.65, R * 0.18):
        draw.ellipse(_box(x, y, 2, 1.2), fill=(250, 240, 210))
    return cx, cy, w, R * 0.15


def _cookies(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    tray = rng.choice([(70, 70, 75), (235, 225, 200)])
    draw.rectangle(_box(cx, cy, R * 1.05, R * 0.85), fill=tray)
    dough = _mix((205, 155, 95), comp.ingredients[0].colour, 0.3)
    spots = [(cx + dx * R * 0.6, cy + dy * R * 0.45) for dx in (-1, 0, 1) for dy in (-1, 1)]
    for x, y in spots:
        draw.ellipse(_box(x, y, R * 0.3), fill=dough, outline=_shade(dough, 0.75))
        _toppings(draw, rng, comp, _scatter(rng, 2, x, y, R * 0.14), R * 0.09)
    return cx, cy, R * 0.9, R * 0.7


def _smoothie(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    top, bottom = cy - R * 0.9, cy + R * 0.9
    glass = [(cx - R * 0.45, top), (cx + R * 0.45, top), (cx + R * 0.33, bottom), (cx - R * 0.33, bottom)]
    draw.polygon(glass, fill=(225, 235, 240), outline=(170, 180, 190))
    fill_top = top + R * 0.2
    drink = _base_colour(comp, _WHITE, 0.2)
    draw.polygon([(cx - R * 0.43, fill_top), (cx + R * 0.43, fill_top), (cx + R * 0.32, bottom - 3), (cx - R * 0.32, bottom - 3)], fill=drink)
    draw.line([(cx + R * 0.1, fill_top + R * 0.3), (cx + R * 0.35, top - R * 0.4)], fill=(230, 60, 90), width=max(3, int(R * 0.07)))
    _draw_topping(draw, rng, comp.ingredients[0], cx - R * 0.3, top - R * 0.02, R * 0.2)
    if len(comp.ingredients) > 1:
        _draw_topping(draw, rng, comp.ingredients[1], cx + R * 0.45, top + R * 0.05, R * 0.15)
    return cx, (fill_top + bottom) / 2, R * 0.35, R * 0.6


def _muffins(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    paper = rng.choice([(230, 120, 140), (120, 170, 220), (240, 240, 235)])
    dome = _mix((200, 150, 90), comp.ingredients[0].colour, 0.4)
    for k in (-1, 0, 1):
        x = cx + k * R * 0.62
        y = cy + (0.15 if k else -0.1) * R
        draw.polygon([(x - R * 0.3, y), (x + R * 0.3, y), (x + R * 0.22, y + R * 0.45), (x - R * 0.22, y + R * 0.45)], fill=paper)
        draw.pieslice(_box(x, y + R * 0.02, R * 0.36, R * 0.34), 180, 360, fill=dome, outline=_shade(dome, 0.75))
        _toppings(draw, rng, comp, [(x - R * 0.1, y - R * 0.14), (x + R * 0.12, y - R * 0.1)], R * 0.1)
    return cx, cy - R * 0.1, R * 0.9, R * 0.2


def _skewers(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy, R)
    other = comp.ingredients[1] if len(comp.ingredients) > 1 else Ingredient("pepper", (60, 150, 50), (40, 100, 30), "square", "")
    for k in (-1, 0, 1):
        offset = k * R * 0.35
        ends = _rotated([(-R * 0.85, offset), (R * 0.85, offset)], cx, cy, -0.5)
        draw.line(ends, fill=(190, 160, 110), width=2)
        for j in range(5):
            t = 0.15 + j * 0.175
            x, y = ends[0][0] + (ends[1][0] - ends[0][0]) * t, ends[0][1] + (ends[1][1] - ends[0][1]) * t
            ing = comp.ingredients[0] if j % 2 == 0 else other
            draw.rectangle(_box(x, y, R * 0.1), fill=ing.colour, outline=_shade(ing.colour, 0.7))
    return cx, cy, R * 0.7, R * 0.6


def _sandwich(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy, R)
    bread, crust = (240, 215, 165), (190, 135, 70)
    filling = _base_colour(comp, _WHITE, 0.1)
    for side in (-1, 1):
        x = cx + side * R * 0.08
        triangle = [(x, cy - R * 0.65), (x + side * R * 0.7, cy + R * 0.5), (x, cy + R * 0.5)]
        draw.polygon(triangle, fill=bread, outline=crust, width=3)
        draw.line([(x, cy - R * 0.6), (x, cy + R * 0.5)], fill=filling, width=max(4, int(R * 0.12)))
        _toppings(draw, rng, comp, [(x + side * R * 0.25, cy + R * 0.15)], R * 0.13)
    return cx, cy, R * 0.6, R * 0.5


def _omelette(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    _plate(draw, rng, cx, cy, R)
    draw.pieslice(_box(cx, cy - R * 0.15, R * 0.75, R * 0.6), 0, 180, fill=(250, 215, 90), outline=(215, 170, 50), width=2)
    _toppings(draw, rng, comp, [(cx + k * R * 0.25, cy - R * 0.12) for k in (-2, -1, 0, 1, 2)], R * 0.12)
    return cx, cy + R * 0.05, R * 0.6, R * 0.3


def _icecream(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    cone = (210, 160, 90)
    draw.polygon([(cx - R * 0.38, cy), (cx + R * 0.38, cy), (cx, cy + R * 0.95)], fill=cone, outline=(160, 110, 50))
    for k in range(1, 4):
        draw.line([(cx - R * 0.38 + k * R * 0.19, cy), (cx, cy + R * 0.95)], fill=(170, 120, 60), width=1)
    scoop = _base_colour(comp, _WHITE, 0.3)
    draw.ellipse(_box(cx, cy - R * 0.1, R * 0.45, R * 0.35), fill=scoop, outline=_shade(scoop, 0.85))
    draw.ellipse(_box(cx, cy - R * 0.55, R * 0.4, R * 0.32), fill=scoop, outline=_shade(scoop, 0.85))
    _toppings(draw, rng, comp, [(cx - R * 0.15, cy - R * 0.65), (cx + R * 0.18, cy - R * 0.5), (cx, cy - R * 0.2)], R * 0.12)
    return cx, cy - R * 0.35, R * 0.4, R * 0.4


def _bread(draw: ImageDraw.ImageDraw, rng: random.Random, comp: DishComponents, cx: float, cy: float, R: float) -> Ellipse:
    loaf = (185, 120, 55)
    draw.rounded_rectangle(_box(cx - R * 0.15, cy, R * 0.75, R * 0.45), radius=int(R * 0.3), fill=loaf, outline=(130, 80, 30), width=2)
    for k in (-1, 0, 1):
        x = cx - R * 0.15 + k * R * 0.35
        draw.line([(x - R * 0.1, cy - R * 0.3), (x + R * 0.1, cy + R * 0.3)], fill=(230, 190, 120), width=3)
    crumb = _base_colour(comp, (245, 225, 185), 0.55)
    draw.ellipse(_box(cx + R * 0.7, cy + R * 0.05, R * 0.32, R * 0.42), fill=crumb, outline=loaf, width=4)
    _toppings(draw, rng, comp, _scatter(rng, 3, cx + R * 0.7, cy + R * 0.05, R * 0.15, R * 0.25), R * 0.1)
    return cx, cy, R * 0.8, R * 0.4


_DISH_RENDERERS: dict[str, Callable[..., Ellipse]] = {
    "soup": _soup,
    "curry": _curry,
    "stew": _stew,
    "salad": _salad,
    "cake": _cake,
    "pie": _pie,
    "pizza": _pizza,
    "pasta": _pasta,
    "toast": _toast,
    "pancakes": _pancakes,
    "tacos": _tacos,
    "burger": _burger,
    "cookies": _cookies,
    "smoothie": _smoothie,
    "muffins": _muffins,
    "skewers": _skewers,
    "sandwich": _sandwich,
    "omelette": _omelette,
    "icecream": _icecream,
    "bread": _bread,
}


def _draw_descriptor_cue(draw: ImageDraw.ImageDraw, rng: random.Random, descriptor: str, area: Ellipse) -> None:
    """Visible cue of a descriptor (spicy: chili flecks; creamy: white swirl; …)."""
    cx, cy, rx, ry = area
    if descriptor == "Spicy":
        for x, y in _scatter(rng, 14, cx, cy, rx, ry):
            draw.ellipse(_box(x, y, 1.8), fill=(215, 20, 10))
        x, y = _scatter(rng, 1, cx, cy, rx * 0.6, ry * 0.6)[0]
        draw.line([(x, y), (x + rx * 0.35, y - ry * 0.15)], fill=(200, 15, 10), width=max(3, int(rx * 0.12)))
    elif descriptor == "Creamy":
        for k in range(3):
            radius = (k + 1) * min(rx, ry) * 0.22
            draw.arc(_box(cx, cy, radius), 20 * k, 20 * k + 300, fill=(252, 252, 245), width=3)
    elif descriptor == "Cheesy":
        for x, y in _scatter(rng, 5, cx, cy, rx, ry):
            draw.ellipse(_box(x, y, rx * 0.16, ry * 0.12), fill=(255, 195, 40))
    elif descriptor == "Herbed":
        for x, y in _scatter(rng, 22, cx, cy, rx, ry):
            draw.line([(x, y), (x + 2, y + 1)], fill=(50, 150, 40), width=2)
    elif descriptor == "Grilled":
        for k in range(-2, 3):
            x = cx + k * rx * 0.3
            draw.line([(x - rx * 0.2, cy - ry * 0.6), (x + rx * 0.2, cy + ry * 0.6)], fill=(55, 35, 20), width=3)
    elif descriptor == "Glazed":
        for x, y in _scatter(rng, 3, cx, cy, rx * 0.7, ry * 0.7):
            draw.ellipse(_box(x, y, rx * 0.22, ry * 0.08), fill=(255, 250, 230))
        draw.line(_scatter(rng, 5, cx, cy, rx, ry), fill=(150, 80, 20), width=2, joint="curve")


# --------------------------------------------------------------------------- photos

_TABLES: tuple[RGB, ...] = (
    (150, 105, 65), (120, 80, 50), (200, 160, 115), (235, 235, 230), (215, 210, 200),
    (70, 72, 78), (45, 45, 50), (190, 210, 225), (205, 225, 200), (235, 215, 215),
)


def _background(rng: random.Random) -> Image.Image:
    """A table: wood grain, a check cloth or a plain surface, sometimes cutlery."""
    table = rng.choice(_TABLES)
    image = Image.new("RGB", (_CANVAS, _CANVAS), table)
    draw = ImageDraw.Draw(image)
    style = rng.random()
    if style < 0.35:
        for y in range(0, _CANVAS, rng.randint(10, 22)):
            draw.line([(0, y), (_CANVAS, y + rng.randint(-6, 6))], fill=_shade(table, 0.88), width=2)
    elif style < 0.55:
        cloth, step = rng.choice([(200, 40, 40), (40, 80, 160), (60, 120, 60)]), rng.randint(18, 30)
        for k in range(0, _CANVAS, step * 2):
            draw.rectangle((k, 0, k + step, _CANVAS), fill=_mix(table, cloth, 0.35))
            draw.rectangle((0, k, _CANVAS, k + step), fill=_mix(table, cloth, 0.35))
    if rng.random() < 0.5:
        x = rng.choice((rng.uniform(8, 28), rng.uniform(228, 248)))
        metal = (190, 192, 198)
        draw.rounded_rectangle((x - 3, 40, x + 3, 216), radius=3, fill=metal)
        draw.rectangle((x - 7, 40, x + 7, 70), fill=metal)
    return image


def _light_and_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    """Uneven lighting, a colour cast and sensor noise, so no two photos match pixel for pixel."""
    np_rng = np.random.default_rng(rng.getrandbits(64))
    pixels = np.asarray(image, dtype=np.float32)
    ramp = np.linspace(-1.0, 1.0, _CANVAS, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(0.8, 1.12) + rng.uniform(0.0, 0.18) * (
        math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
    )
    cast = np.array([1 + rng.uniform(-0.06, 0.06), 1.0, 1 + rng.uniform(-0.06, 0.06)], dtype=np.float32)
    noise = np_rng.normal(0.0, rng.uniform(2.0, 8.0), size=pixels.shape).astype(np.float32)
    pixels = pixels * light[:, :, None] * cast + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render_dish_picture(recipe: dict, position: int, seed: int, size: int = 512) -> Image.Image:
    """The photo of ``recipe`` at ``position`` as an RGB PIL image of ``size`` x ``size``.

    The dish (from the title) decides the layout and the ingredients the colours and
    toppings; the recipe id fixes the dish's own look; the position decides the shot
    (placement, scale, rotation, background, lighting, noise).
    """
    title = recipe.get("title_text_raw") or recipe.get("title_text_clean") or recipe.get("title") or ""
    comp = dish_components(title)
    dish_rng = random.Random(_stable_seed("dish", seed, recipe["id"]))
    shot_rng = random.Random(_stable_seed("shot", seed, recipe["id"], position))

    image = _background(shot_rng)
    radius = _CANVAS * 0.36 * shot_rng.uniform(0.82, 1.08)
    cx = _CANVAS / 2 + shot_rng.uniform(-0.08, 0.08) * _CANVAS
    cy = _CANVAS / 2 + shot_rng.uniform(-0.08, 0.08) * _CANVAS
    angle = shot_rng.uniform(-25, 25)
    food = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(food)
    area = _DISH_RENDERERS[comp.dish.layout](draw, dish_rng, comp, cx, cy, radius)
    for descriptor in comp.descriptors:
        _draw_descriptor_cue(draw, dish_rng, descriptor, area)
    food = food.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))
    # A soft drop shadow in the dish's own outline.
    shadow = food.getchannel("A").point(lambda alpha: alpha * 70 // 255)
    image.paste((0, 0, 0), box=(4, 6), mask=shadow)
    image.paste(food, mask=food)
    image = _light_and_noise(image, shot_rng)
    if size != _CANVAS:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def render_dish_image(recipe: dict, position: int, seed: int, size: int = 512) -> bytes:
    """JPEG bytes (RGB, ``size`` x ``size``) of ``render_dish_picture``."""
    buffer = io.BytesIO()
    render_dish_picture(recipe, position, seed, size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _trusted_images(recipes: list[dict], seed: int) -> Iterator[tuple[str, bytes]]:
    for recipe in recipes:
        for position in range(1, recipe["n_images"] + 1):
            yield image_key(recipe, position), render_dish_image(recipe, position, seed)


# --------------------------------------------------------------------------- the ADSDB zone format

ZONE_FORMATS = ("adsdb", "simple")
ADSDB_PROJECT = "adsdb"
# Photos per recipe in the ADSDB zone: 1 to 9, most recipes with few.
_ADSDB_PHOTO_COUNTS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
_ADSDB_PHOTO_WEIGHTS = (30, 25, 18, 10, 6, 4, 3, 2, 2)
# Decorations real raw titles carry: punctuation, asides, accents (the clean title folds them away).
_ADSDB_ASIDES = (" (Easy!)", " (Make-Ahead)", " - Quick & Easy", "!", " (Vegetarian)")
_ADSDB_ACCENTED = ("Sautéed ", "Crème ", "Jalapeño ", "Flambéed ", "Purée of ")
_ADSDB_TIME_ORIGIN = 1_759_305_600  # 2025-10-01T08:00:00Z: when the synthetic ingestion "ran"
# English stop words dropped from the *_clean fields (a short list, as ADSDB's cleaning uses).
ADSDB_STOP_WORDS = frozenset(
    "a an and are as at be but by for from in into is it its of on or the to with without "
    "your you our them other then this that over all each easy quick best recipe ii".split()
)


def adsdb_clean(text: str) -> str:
    """ADSDB's ``*_text_clean``: lower-case, accents folded, asides and punctuation removed, stop words dropped.

    "Chicken Pot Pie (Easy!)" -> "chicken pot pie"; "Sautéed Jalapeño Soup" -> "sauteed jalapeno soup".
    """
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    folded = re.sub(r"\([^)]*\)", " ", folded).lower().replace("'", "")
    return " ".join(w for w in re.findall(r"[a-z0-9]+", folded) if w not in ADSDB_STOP_WORDS)


def adsdb_image_key(project: str, taken: float, image: bytes, recipe_id: str, position: int) -> str:
    """``images/image$<project>$<YYYY-MM-DDTHH-MM-SSZ>$<md5 of the photo>__<recipeId>_<n>.jpg``."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime(taken))
    return f"images/image${project}${stamp}${hashlib.md5(image).hexdigest()}__{recipe_id}_{position}.jpg"


def _adsdb_ids(recipes: list[dict], rng: random.Random) -> list[str]:
    """The recipes' hex ids, with at least one all-digit id ("0004073370") and one that reads as a
    number in exponent form ("0001e52345") when there are three or more: about 1 % of real ids."""
    ids = [r["id"] for r in recipes]
    taken = set(ids)

    def fresh(make) -> str:
        while (candidate := make()) in taken:
            pass
        taken.add(candidate)
        return candidate

    if len(ids) >= 3 and not any(i.isdigit() for i in ids):
        ids[1] = fresh(lambda: f"000{rng.randrange(10**7):07d}")
    if len(ids) >= 3 and not any(re.fullmatch(r"\d+e\d+", i) for i in ids):
        ids[2] = fresh(lambda: f"000{rng.randrange(10)}e{rng.randrange(10**5):05d}")
    return ids


def _nutrition(rng: random.Random) -> dict:
    per100g = {"energy": round(rng.uniform(40, 450), 2), "fat": round(rng.uniform(0, 30), 2),
               "protein": round(rng.uniform(0, 25), 2), "salt": round(rng.uniform(0, 2), 2),
               "saturates": round(rng.uniform(0, 12), 2), "sugars": round(rng.uniform(0, 40), 2)}
    weight = rng.uniform(300, 1800)
    return {"nutr_values_per100g": per100g,
            "nutrition_totals": {k: round(v * weight / 100, 2) for k, v in per100g.items()} | {"weight_g": round(weight, 1)}}


def adsdb_recipes(n_recipes: int, seed: int) -> list[dict]:
    """Recipe rows in the ADSDB trusted zone's shape, each with the photos it has (``_photos``, not written).

    Fields: id, title_text_raw, title_text_clean, ingredients_text_raw/clean, instructions_text_raw/clean,
    has_nutrition_data, title__from_layer1, ingredients__from_layer1, instructions__from_layer1 (lists of
    {"text": ...}) and, with nutrition data, nutr_values_per100g and nutrition_totals.
    """
    recipes = generate_recipes(n_recipes, seed)
    rng = random.Random(_stable_seed("adsdb", seed))
    rows = []
    for recipe, recipe_id in zip(recipes, _adsdb_ids(recipes, rng), strict=True):
        title = recipe["title_text_raw"]
        roll = rng.random()
        if roll < 0.08:
            title = rng.choice(_ADSDB_ACCENTED) + title
        elif roll < 0.2:
            title += rng.choice(_ADSDB_ASIDES)
        ingredients, instructions = recipe["ingredients"], recipe["instructions"]
        has_nutrition = rng.random() < 0.6
        row = {
            "id": recipe_id,
            "title_text_raw": title,
            "title_text_clean": adsdb_clean(title),
            "ingredients_text_raw": "; ".join(ingredients),
            "ingredients_text_clean": adsdb_clean(" ".join(ingredients)),
            "instructions_text_raw": " ".join(instructions),
            "instructions_text_clean": adsdb_clean(" ".join(instructions)),
            "has_nutrition_data": has_nutrition,
            "title__from_layer1": [{"text": title}],
            "ingredients__from_layer1": [{"text": i} for i in ingredients],
            "instructions__from_layer1": [{"text": i} for i in instructions],
        }
        if has_nutrition:
            row.update(_nutrition(rng))
        row["_photos"] = rng.choices(_ADSDB_PHOTO_COUNTS, _ADSDB_PHOTO_WEIGHTS)[0]
        row["_taken"] = _ADSDB_TIME_ORIGIN + rng.randrange(86_400 * 30)
        rows.append(row)
    return rows


def _adsdb_images(rows: list[dict], seed: int, project: str) -> Iterator[tuple[str, bytes]]:
    for row in rows:
        for position in range(row["_photos"]):  # ADSDB numbers photos from 0
            data = render_dish_image(row, position, seed)
            yield adsdb_image_key(project, row["_taken"] + position, data, row["id"], position), data


def synthetic_trusted_zone(
    n_recipes: int, seed: int, zone_format: str = "simple", project: str = ADSDB_PROJECT
) -> tuple[bytes, Iterator[tuple[str, bytes]]]:
    """A whole synthetic trusted zone.

    Returns the ``documents/recipes.jsonl`` bytes (one JSON object per line, UTF-8) and a
    lazy iterator of ``(key, jpeg_bytes)`` (512x512 RGB JPEG, quality 90).

    ``zone_format="simple"``: keys ``images/<slug>__<id>_<position>.jpg``, positions 1..n_images
    (1-4), rows as :func:`generate_recipes`. ``"adsdb"``: the real trusted zone's shape, see
    :func:`adsdb_recipes` and :func:`adsdb_image_key` (positions from 0, 1-9 photos).
    """
    if zone_format not in ZONE_FORMATS:
        raise ValueError(f"zone_format must be one of {ZONE_FORMATS}, got {zone_format!r}")
    if zone_format == "simple":
        recipes = generate_recipes(n_recipes, seed)
        lines = (json.dumps(recipe, ensure_ascii=False) + "\n" for recipe in recipes)
        return "".join(lines).encode("utf-8"), _trusted_images(recipes, seed)
    if "$" in project or "/" in project or "__" in project or not project:
        raise ValueError(f"project {project!r} cannot appear in an ADSDB image key")
    rows = adsdb_recipes(n_recipes, seed)
    lines = (json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, ensure_ascii=False) + "\n"
             for row in rows)
    return "".join(lines).encode("utf-8"), _adsdb_images(rows, seed, project)


# --------------------------------------------------------------------------- a zone at scale

SCALE_BASE_PHOTOS = 8  # distinct pictures behind every key of a zone at scale
SCALE_PHOTO_PX = 64


def _scale_id(i: int, seed: int) -> str:
    """A distinct 10-hex-digit id per index: multiplying by an odd number is a bijection mod 2**40."""
    return f"{(i * 0x9E3779B1 + seed * 0x5851F42D) % (1 << 40):010x}"


def scale_recipe(i: int, seed: int = 0) -> dict:
    """Recipe ``i`` of a zone at scale: an ADSDB row (id, raw and clean title), computed from ``i`` alone."""
    dish = DISHES[i % len(DISHES)]
    ingredient = INGREDIENTS[i // len(DISHES) % len(INGREDIENTS)]
    descriptor = DESCRIPTORS[i // (len(DISHES) * len(INGREDIENTS)) % len(DESCRIPTORS)]
    title = f"{descriptor} {ingredient.name} {dish.name}"
    return {"id": _scale_id(i, seed), "title_text_raw": title, "title_text_clean": adsdb_clean(title),
            "has_nutrition_data": False}


def with_comment(jpeg: bytes, comment: bytes) -> bytes:
    """The same picture with a JPEG comment (COM segment) after the start marker: other bytes, so another
    ETag, and it still decodes to the same pixels."""
    if len(comment) > 65_533:
        raise ValueError("a JPEG comment holds at most 65,533 bytes")
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def scale_trusted_zone(n_recipes: int, photos_per_recipe: int = 4, seed: int = 0,
                       project: str = ADSDB_PROJECT) -> tuple[Iterator[bytes], Iterator[tuple[str, bytes]]]:
    """A trusted zone of ``n_recipes`` recipes with ``photos_per_recipe`` photos each, made fast and streamed.

    For listing, copy and change detection at scale: a few pictures (``SCALE_BASE_PHOTOS``, 64 px,
    decodable) reused under distinct ADSDB keys, each with a comment naming its key's recipe and
    position, so every object has its own ETag. Returns an iterator of recipes.jsonl lines (UTF-8) and one
    of ``(key, jpeg_bytes)``; neither holds the zone in memory.
    """
    if n_recipes < 0 or photos_per_recipe < 1:
        raise ValueError(f"need n_recipes >= 0 and photos_per_recipe >= 1, got {n_recipes}, {photos_per_recipe}")
    bases = [render_dish_image(scale_recipe(i, seed), 0, seed, size=SCALE_PHOTO_PX) for i in range(SCALE_BASE_PHOTOS)]

    def lines() -> Iterator[bytes]:
        for i in range(n_recipes):
            yield (json.dumps(scale_recipe(i, seed), ensure_ascii=False) + "\n").encode("utf-8")

    def images() -> Iterator[tuple[str, bytes]]:
        for i in range(n_recipes):
            recipe_id = _scale_id(i, seed)
            for position in range(photos_per_recipe):
                data = with_comment(bases[(i + position) % len(bases)], f"{recipe_id}_{position}".encode())
                taken = _ADSDB_TIME_ORIGIN + (i * photos_per_recipe + position) % (86_400 * 30)
                yield adsdb_image_key(project, taken, data, recipe_id, position), data

    return lines(), images()
