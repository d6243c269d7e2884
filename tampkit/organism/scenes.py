"""Procedurally generated scenes: coloured shapes on a 3x3 grid, drawn at 48x48 pixels.

A scene is a list of objects (colour, shape, size, grid cell) on a plain or textured background.
Scene `i` of a split is drawn from `random.Random(f"{split}:{i}")`, so every split is an infinite,
deterministic, independent stream (Python seeds string keys through SHA-512: the same on every
machine). Rendering is exact: each object stays inside its own 16x16 cell, is filled with exactly
its colour's RGB value, and no background pixel ever takes one of those values, so every answer
can be recomputed from the pixels (tests/test_organism_scenes.py does).

Category frequencies are skewed (some colour/shape pairs are common, some rare) and objects after
the first tend to share an attribute with an earlier one. That gives POPE's "popular" and
"adversarial" (co-occurring) negatives something real to be drawn from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE = 48  # pixels per side
GRID = 3  # cells per side
CELL = IMAGE // GRID
MAX_OBJECTS = 5

#: Object colours: pure-ish, far from every background value.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
    "yellow": (240, 200, 20), "purple": (140, 40, 180), "orange": (250, 120, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, int] = {"small": 4, "large": 6}  # half-extent in pixels
SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Row and column names used in captions.
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")

Category = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    row: int
    col: int
    dx: int = 0  # jitter of the centre inside the cell, pixels
    dy: int = 0

    @property
    def category(self) -> Category:
        return (self.colour, self.shape)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[int, int]:
        """(x, y) pixel centre."""
        return self.col * CELL + CELL // 2 + self.dx, self.row * CELL + CELL // 2 + self.dy


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    objects: tuple[SceneObject, ...]
    background: str  # "plain" or "textured"
    background_seed: int

    @property
    def id(self) -> str:
        return f"{self.split}/{self.index}"

    def categories(self) -> set[Category]:
        return {o.category for o in self.objects}

    def caption(self) -> str:
        """One sentence naming every object with its size and place, in reading order."""
        parts = []
        for o in sorted(self.objects, key=lambda o: (o.row, o.col)):
            place = "centre" if (o.row, o.col) == (1, 1) else f"{ROWS[o.row]} {COLUMNS[o.col]}"
            parts.append(f"a {o.size} {o.colour} {o.shape} at the {place}")
        count = len(self.objects)
        return f"{count} object{'s' if count > 1 else ''} on a {self.background} background : " + " , ".join(parts)

    def image(self) -> Image.Image:
        return render(self)


def _category_weights() -> dict[Category, float]:
    """Zipf-like weights over the 24 categories in a fixed shuffled order: what is 'popular'. Mild
    (exponent 0.5: the most frequent category about 3.5x the rarest), so that popularity exists but
    a question's text gives its answer away as little as the question draw can correct."""
    categories = [(c, s) for c in COLOURS for s in SHAPES]
    random.Random("category-order").shuffle(categories)
    return {cat: 1.0 / (rank + 2) ** 0.5 for rank, cat in enumerate(categories)}


CATEGORY_WEIGHTS: dict[Category, float] = _category_weights()


def _draw_category(rng: random.Random, taken: set[Category], related_to: list[Category]) -> Category:
    """A category not yet in the scene; with probability 1/2 one sharing the colour or the shape of
    an object already there (co-occurrence), else by the global frequency weights."""
    free = [c for c in CATEGORY_WEIGHTS if c not in taken]
    if related_to and rng.random() < 0.5:
        anchor = rng.choice(related_to)
        related = [c for c in free if c[0] == anchor[0] or c[1] == anchor[1]]
        if related:
            free = related
    return rng.choices(free, weights=[CATEGORY_WEIGHTS[c] for c in free])[0]


def make_scene(split: str, index: int) -> Scene:
    """Scene `index` of `split`: 1..5 objects of distinct categories in distinct cells."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{split}:{index}")
    count = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(GRID * GRID), count)
    objects: list[SceneObject] = []
    for cell in cells:
        category = _draw_category(rng, {o.category for o in objects}, [o.category for o in objects])
        objects.append(SceneObject(category[0], category[1], rng.choice(tuple(SIZES)), cell // GRID, cell % GRID,
                                   rng.randint(-1, 1), rng.randint(-1, 1)))
    return Scene(split, index, tuple(objects), rng.choice(("plain", "textured")), rng.randrange(2**31))


def _background(scene: Scene) -> np.ndarray:
    """Pale greys and tints (every channel >= 180, so never an object colour); textured adds
    stripes or speckle of at most +-20."""
    rng = np.random.default_rng(scene.background_seed)
    base = rng.integers(200, 236, size=3)
    canvas = np.broadcast_to(base, (IMAGE, IMAGE, 3)).astype(np.int16)
    if scene.background == "textured":
        if rng.random() < 0.5:
            period = int(rng.integers(3, 7))
            stripes = (np.arange(IMAGE) // period) % 2 * 18
            canvas = canvas + (stripes[:, None, None] if rng.random() < 0.5 else stripes[None, :, None])
        else:
            canvas = canvas + rng.integers(-20, 21, size=(IMAGE, IMAGE, 1))
    return np.clip(canvas, 180, 255).astype(np.uint8)


def render(scene: Scene) -> Image.Image:
    """The scene as a 48x48 RGB image (no anti-aliasing: object pixels are exactly their colour)."""
    image = Image.fromarray(_background(scene))
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        x, y = o.centre
        r = SIZES[o.size]
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        else:  # cross: two bars a third of the extent wide
            w = max(r // 3, 1)
            draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
            draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    return image


@lru_cache(maxsize=1)
def train_statistics(scenes: int = 4000) -> tuple[dict[Category, int], dict[Category, dict[Category, int]]]:
    """(how often each category appears, how often each pair co-occurs) over the first `scenes`
    training scenes: what POPE's popular and adversarial negatives are ranked by."""
    frequency = {c: 0 for c in CATEGORY_WEIGHTS}
    together = {c: {d: 0 for d in CATEGORY_WEIGHTS} for c in CATEGORY_WEIGHTS}
    for i in range(scenes):
        present = make_scene("train", i).categories()
        for c in present:
            frequency[c] += 1
            for d in present:
                if d != c:
                    together[c][d] += 1
    return frequency, together
