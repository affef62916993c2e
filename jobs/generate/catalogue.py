"""The generated world's item catalogue: titles and category paths with planted text similarity.

Every taste cluster of the world (``world.py``) gets a *theme* (space, cooking, jazz, ...); each
category of a cluster is a product kind of that theme ("Space > Kits"), and an item's title is
two or three of its theme's words and its kind ("Galactic nebula starship kit"). Items that the
same users like therefore read alike, so a language model's vectors of the titles carry the
taste structure, and a text model can recommend an item that no one has interacted with yet.

Written by ``reclake generate`` to ``<out>/items/items.csv`` (header ``item_id,title,category,
brand``, item ids as in the event files), for ``reclake ingest-items --source-format generic``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from common.config import GenerateConfig
from jobs.generate.world import world_of

THEMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Space", ("starship", "galaxy", "orbit", "astronaut", "nebula", "rocket", "comet", "planet")),
    ("Cooking", ("recipe", "kitchen", "baking", "spices", "chef", "pasta", "bread", "soup")),
    ("Gardening", ("roses", "seeds", "compost", "greenhouse", "tulips", "soil", "herbs", "orchard")),
    ("Jazz", ("saxophone", "swing", "trumpet", "bebop", "blues", "piano", "quartet", "groove")),
    ("Fitness", ("running", "yoga", "dumbbell", "marathon", "workout", "cardio", "stretch",
                 "muscle")),
    ("Travel", ("passport", "beach", "luggage", "island", "hotel", "flight", "journey", "map")),
    ("Pets", ("puppy", "kitten", "leash", "aquarium", "parrot", "grooming", "hamster", "kennel")),
    ("History", ("medieval", "empire", "castle", "pharaoh", "knight", "ancient", "dynasty",
                 "ruins")),
    ("Photography", ("camera", "lens", "tripod", "portrait", "landscape", "shutter", "darkroom",
                     "zoom")),
    ("Gaming", ("console", "joystick", "arcade", "quest", "dragon", "pixel", "dungeon", "boss")),
    ("Finance", ("stocks", "budget", "investing", "savings", "tax", "banking", "pension", "loan")),
    ("Kids", ("toys", "crayons", "fairy", "puzzle", "storybook", "blocks", "teddy", "playground")),
    ("Ocean", ("sailing", "whales", "coral", "diving", "surf", "lighthouse", "harbour", "tide")),
    ("Mountains", ("hiking", "climbing", "glacier", "tent", "trail", "alpine", "summit", "cabin")),
    ("Coffee", ("espresso", "barista", "roast", "latte", "beans", "grinder", "mocha", "crema")),
    ("Cars", ("engine", "racing", "tyres", "garage", "motor", "turbo", "rally", "gearbox")),
)
KINDS = ("guide", "kit", "magazine", "set", "poster", "album", "course", "handbook", "box",
         "collection")
ADJECTIVES = ("Classic", "Deluxe", "Essential", "Little", "Complete", "Modern", "Vintage",
              "Ultimate", "Pocket", "Grand")
BRANDS = ("Acme", "Northwind", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell")
COLUMNS = ("item_id", "title", "category", "brand")


def catalogue_rows(g: GenerateConfig) -> list[tuple[str, str, str, str]]:
    """``(item_id, title, category, brand)`` of every item of the world (deterministic)."""
    w = world_of(g)
    rng = np.random.default_rng([g.seed, 2**41])  # a stream no chunk nor the world uses
    n_cat = len(w.category_cluster)
    kind_of = rng.integers(0, len(KINDS), n_cat)
    rows = []
    for item in range(len(w.item_category)):
        cat = int(w.item_category[item])
        theme, words = THEMES[int(w.category_cluster[cat]) % len(THEMES)]
        kind = KINDS[kind_of[cat]]
        picked = rng.choice(len(words), size=int(rng.integers(2, 4)), replace=False)
        title = " ".join([ADJECTIVES[rng.integers(len(ADJECTIVES))],
                          *(words[j] for j in picked), kind])
        rows.append((str(item + 1), title, f"{theme} > {kind.title()}s",
                     BRANDS[rng.integers(len(BRANDS))]))
    return rows


def write_catalogue(g: GenerateConfig, out: str | Path | None = None) -> Path:
    """Write ``<out>/items/items.csv``; returns its path."""
    path = Path(out if out is not None else g.out) / "items" / "items.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(catalogue_rows(g))
    return path
