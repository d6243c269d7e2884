"""Questions about a scene, each with its one-word answer, computed from the scene's objects, and
drawn so that the question's text does not give the answer away.

Types (and uniform chance): colour ("what colour is the circle ?", 1/6), shape ("what shape is the
red object ?", 1/4), count ("how many objects are there ?", 1/5), relation ("where is the red
circle relative to the blue square ?": left, right, above, below; 1/4) and presence ("is there a
red circle ?", yes/no, 1/2) in POPE's three settings: the absent category of a "no" is any absent
category (random), one of the `POPULAR` most frequent categories of the training split (popular),
or one sharing a colour or a shape with an object in the scene, the pairs the generator makes
co-occur (adversarial).

Uniform chance is not what a blind model gets. Categories are mildly Zipf-distributed (what makes
"popular" mean something), so the most frequent answer for a question's text beats chance unless
the questions are drawn against it. So which category a question is about is a weighted draw among
the scene's candidates, with per-category weights fitted once (iterative proportional fitting on the first `FIT_SCENES` training scenes, pure
Python floats: the same on every machine) so that each category is asked about equally often as
"yes" and as "no" within every POPE setting, and colour (shape) answers are as even as possible for
each shape (colour) asked about. What is left of the prior is measured, not assumed:
`tampkit.organism.blind` fits a text-only predictor on the training stream and the card reports it.

A question is asked only when its answer is unique: colour needs the shape to appear once, shape
the colour once, relation two objects sharing a row (left/right) or a column (above/below).
`position_questions` ("where is the red circle ?" -> "top left") are training-only turns that teach
the content-to-place lookup relation questions need; the evaluation never asks them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from tampkit.organism.scenes import (CATEGORY_WEIGHTS, COLOURS, COLUMNS, MAX_OBJECTS, ROWS, SHAPES, SIZES, Category,
                                     Scene, make_scene, train_statistics)

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "relation", "presence")
POPE_SETTINGS: tuple[str, ...] = ("random", "popular", "adversarial")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
#: Accuracy of uniform guessing per type (presence is balanced yes/no).
CHANCE: dict[str, float] = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / MAX_OBJECTS,
                            "relation": 1 / len(RELATIONS), "presence": 0.5}
#: How many of the most frequent training categories POPE's popular setting asks about.
POPULAR = 6
#: Training scenes the category weights are fitted on (disjoint from nothing: it is the training
#: stream's own start; validation and test scenes are never used).
FIT_SCENES = 3000
#: Rounds of fitting. 403 is what an editing slip left of the intended 40; it is kept because the
#: shipped organisms were trained and carded on the questions these weights draw (more rounds only
#: converge further; the ~2 s fit runs once per process).
_FIT_ROUNDS = 403


@dataclass(frozen=True)
class SceneQuestion:
    scene: Scene
    kind: str  # one of QUESTION_TYPES
    question: str
    answer: str
    setting: str = ""  # presence only: one of POPE_SETTINGS

    @property
    def id(self) -> str:
        suffix = f"-{self.setting}" if self.setting else ""
        return f"{self.scene.id}/{self.kind}{suffix}/{self.answer}"


# --- which categories a question may be about ----------------------------------------------------


def popular_categories() -> tuple[Category, ...]:
    """The `POPULAR` most frequent categories of the training split (ties by name)."""
    frequency, _ = train_statistics()
    return tuple(sorted(frequency, key=lambda c: (-frequency[c], c))[:POPULAR])


def _related(category: Category, others: Sequence[Category]) -> bool:
    return any(o != category and (o[0] == category[0] or o[1] == category[1]) for o in others)


def presence_candidates(scene: Scene, setting: str) -> tuple[list[Category], list[Category]]:
    """(categories a "yes" may ask about, categories a "no" may ask about) in a POPE setting."""
    if setting not in POPE_SETTINGS:
        raise ValueError(f"setting must be one of {POPE_SETTINGS}, got {setting!r}")
    present = sorted(scene.categories())
    absent = [c for c in CATEGORY_WEIGHTS if c not in scene.categories()]
    if setting == "popular":
        popular = set(popular_categories())
        return [c for c in present if c in popular], [c for c in absent if c in popular]
    if setting == "adversarial":
        return present, [c for c in absent if _related(c, present)]
    return present, absent


def _unique_holders(scene: Scene, attribute: str) -> list[Category]:
    """Categories whose shape (attribute="shape") or colour appears once: a colour (shape) question
    about them has one answer."""
    values = [getattr(o, attribute) for o in scene.objects]
    return sorted(o.category for o in scene.objects if values.count(getattr(o, attribute)) == 1)


def colour_candidates(scene: Scene) -> list[Category]:
    return _unique_holders(scene, "shape")


def shape_candidates(scene: Scene) -> list[Category]:
    return _unique_holders(scene, "colour")


@lru_cache(maxsize=1)
def _fit_scenes(scenes: int) -> tuple[Scene, ...]:
    return tuple(make_scene("train", i) for i in range(scenes))


def _fit_weights(candidates: Callable[[Scene], list[Category]], scenes: Sequence[Scene],
                 rounds: int = _FIT_ROUNDS) -> dict[Category, float]:
    """Weights w such that drawing one candidate per scene with probability w(c) / sum(w) asks about
    every category that is ever a candidate as equally often as the scenes allow (a scene with one
    candidate asks about it whatever its weight): iterative proportional fitting."""
    per_scene = [c for c in (candidates(s) for s in scenes) if c]
    universe = sorted({c for cands in per_scene for c in cands})
    weight = {c: 1.0 for c in universe}
    for _ in range(rounds):
        asked = {c: 0.0 for c in universe}
        for cands in per_scene:
            total = sum(weight[c] for c in cands)
            for c in cands:
                asked[c] += weight[c] / total
        target = sum(asked.values()) / len(universe)
        weight = {c: weight[c] * (target / asked[c]) ** 0.8 for c in universe}
        top = max(weight.values())
        weight = {c: w / top for c, w in weight.items()}
    return weight


@lru_cache(maxsize=None)
def category_weights(name: str) -> dict[Category, float]:
    """Fitted weights of one draw: "colour", "shape", or "presence-<setting>-yes|no"."""
    scenes = _fit_scenes(FIT_SCENES)
    if name == "colour":
        return _fit_weights(colour_candidates, scenes)
    if name == "shape":
        return _fit_weights(shape_candidates, scenes)
    _, setting, side = name.split("-")
    index = 0 if side == "yes" else 1
    # Only the scenes that ask this setting (index % 3) are fitted: the other scenes never draw it.
    return _fit_weights(lambda s: presence_candidates(s, setting)[index]
                        if s.index % len(POPE_SETTINGS) == POPE_SETTINGS.index(setting) else [], scenes)


def _draw(candidates: list[Category], weights: dict[Category, float], rng: random.Random) -> Category:
    return rng.choices(candidates, weights=[weights.get(c, 1.0) for c in candidates])[0]


# --- the questions -------------------------------------------------------------------------------


#: colour / shape questions: the candidates (categories whose shape / colour is unique in the scene),
#: the question text, and which half of the drawn (colour, shape) category is the answer.
_ATTRIBUTE_QUESTIONS: dict[str, tuple[Callable[[Scene], list[Category]], str, int]] = {
    "colour": (colour_candidates, "what colour is the {shape} ?", 0),
    "shape": (shape_candidates, "what shape is the {colour} object ?", 1),
}


def attribute_question(scene: Scene, kind: str, rng: random.Random) -> SceneQuestion | None:
    """A colour or shape question (`kind`) about one drawn candidate, or None if the scene has none."""
    candidates_of, text, answer = _ATTRIBUTE_QUESTIONS[kind]
    candidates = candidates_of(scene)
    if not candidates:
        return None
    category = _draw(candidates, category_weights(kind), rng)
    return SceneQuestion(scene, kind, text.format(colour=category[0], shape=category[1]), category[answer])


def count_question(scene: Scene) -> SceneQuestion:
    return SceneQuestion(scene, "count", "how many objects are there ?", NUMBERS[len(scene.objects)])


def relation_questions(scene: Scene) -> list[SceneQuestion]:
    """Every ordered pair of objects in the same row or the same column (each pair's two orders
    have opposite answers, so the answers balance left/right and above/below)."""
    out = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b or (a.row != b.row and a.col != b.col):
                continue
            if a.row == b.row:
                answer = "left" if a.col < b.col else "right"
            else:
                answer = "above" if a.row < b.row else "below"
            out.append(SceneQuestion(scene, "relation", f"where is the {a.name} relative to the {b.name} ?", answer))
    return out


def presence_questions(scene: Scene, setting: str, rng: random.Random) -> list[SceneQuestion]:
    """One "yes" and one "no" in `setting`, or none when the scene has no candidate for either."""
    yes_candidates, no_candidates = presence_candidates(scene, setting)
    if not yes_candidates or not no_candidates:
        return []
    yes = _draw(yes_candidates, category_weights(f"presence-{setting}-yes"), rng)
    no = _draw(no_candidates, category_weights(f"presence-{setting}-no"), rng)
    return [SceneQuestion(scene, "presence", f"is there a {yes[0]} {yes[1]} ?", "yes", setting),
            SceneQuestion(scene, "presence", f"is there a {no[0]} {no[1]} ?", "no", setting)]


def scene_questions(scene: Scene) -> list[SceneQuestion]:
    """One question of each type the scene allows, presence as a yes/no pair in the POPE setting
    `index % 3`, in a shuffled order."""
    rng = random.Random(f"questions:{scene.id}")
    out: list[SceneQuestion] = [count_question(scene)]
    for question in (attribute_question(scene, "colour", rng), attribute_question(scene, "shape", rng)):
        if question is not None:
            out.append(question)
    relations = relation_questions(scene)
    if relations:
        out.append(rng.choice(relations))
    out += presence_questions(scene, POPE_SETTINGS[scene.index % len(POPE_SETTINGS)], rng)
    rng.shuffle(out)
    return out


def place(row: int, col: int) -> str:
    """How captions and position answers name a cell."""
    return "centre" if (row, col) == (1, 1) else f"{ROWS[row]} {COLUMNS[col]}"


def position_questions(scene: Scene) -> list[tuple[str, str]]:
    """Training-only turns: where each object is ("where is the red circle ?" -> "top left")."""
    return [(f"where is the {o.name} ?", place(o.row, o.col)) for o in scene.objects]


def split_questions(split: str, scenes: int, start: int = 0) -> list[SceneQuestion]:
    """The questions of scenes start..start+scenes-1 of a split."""
    return [q for i in range(start, start + scenes) for q in scene_questions(make_scene(split, i))]


def vocabulary() -> list[str]:
    """Every word a question, an answer or a caption can contain (the organism's tokenizer)."""
    words = {"what", "colour", "is", "the", "shape", "object", "how", "many", "objects", "are", "there", "?",
             "where", "relative", "to", "a", "at", "on", "background", "plain", "textured", ":", ",",
             "user", "assistant", "centre", "describe", "scene", "."}
    words |= set(COLOURS) | set(SHAPES) | set(SIZES) | set(NUMBERS) | set(RELATIONS) | {"yes", "no"}
    words |= set(ROWS) | set(COLUMNS) | {str(n) for n in range(MAX_OBJECTS + 1)}
    return sorted(words)
