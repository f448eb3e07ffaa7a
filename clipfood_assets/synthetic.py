"""Synthetic trusted zone: recipes plus food photos whose content follows the title.

No real recipe data or model hub is reachable here, so the demo and the tests run on a
generated trusted zone that has the same layout as the real one
(``documents/recipes.jsonl`` + ``images/<slug>__<recipeId>_<position>.jpg``).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DISHES",
    "INGREDIENTS",
    "DESCRIPTORS",
    "DishComponents",
    "caption_corpus",
    "clean_title",
    "dish_components",
    "generate_recipes",
    "image_key",
    "render_dish_image",
    "render_dish_picture",
    "slugify",
    "synthetic_trusted_zone",
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
VISUAL_DESCRIPTORS = frozenset({"Spicy", "Creamy", "Cheesy", "Herbed", "Grilled", "Glazed"})
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


_DISH_BY_WORDS = {d.name.lower(): d for d in DISHES}
_INGREDIENT_BY_WORDS = {i.name.lower(): i for i in INGREDIENTS}
_DESCRIPTOR_BY_WORDS = {clean_d: d for d in DESCRIPTORS if (clean_d := d.lower().replace("'", ""))}


def clean_title(title: str) -> str:
    """Lower-case a title and strip punctuation ("Grandma's Pie (Easy)" -> "grandmas pie easy")."""
    text = title.lower().replace("'", "")
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return " ".join(text.split())


def slugify(title: str) -> str:
    """Key-safe slug of a title: lowercase ascii letters, digits and single hyphens."""
    slug = re.sub(r"[^a-z0-9]+", "-", clean_title(title)).strip("-")
    return slug or "recipe"


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


def _compose_title(rng: random.Random) -> str:
    dish = rng.choice(DISHES)
    main = rng.choice(INGREDIENTS)
    second = rng.choice([i for i in INGREDIENTS if i is not main])
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


def generate_recipes(n_recipes: int, seed: int) -> list[dict]:
    """Generate trusted-zone recipe rows.

    Each row has ``id`` (10 unique lowercase hex chars), ``title_text_raw``,
    ``title_text_clean``, ``ingredients``, ``instructions`` and ``n_images`` (1-4, how many
    photos the trusted zone holds for it). Titles are mostly unique; dish types repeat.
    """
    if n_recipes < 0:
        raise ValueError(f"n_recipes must be >= 0, got {n_recipes}")
    rng = random.Random(_stable_seed("recipes", seed))
    seen_ids: set[str] = set()
    seen_titles: set[str] = set()
    recipes: list[dict] = []
    while len(recipes) < n_recipes:
        recipe_id = f"{rng.getrandbits(40):010x}"
        title = _compose_title(rng)
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
