"""Questions about a scene, each with its one-word answer, computed from the scene's objects.

Types (and chance for a model that never looks): colour ("what colour is the circle ?", 1/6),
shape ("what shape is the red object ?", 1/4), count ("how many objects are there ?", 1/5),
relation ("where is the red circle relative to the blue square ?": left, right, above, below; 1/4)
and presence ("is there a red circle ?", yes/no, 1/2). Presence questions come in POPE's three
settings, each balanced yes/no: the absent category of a "no" is drawn at random, from the most
frequent categories of the training split (popular), or from those that co-occur most with the
scene's objects there (adversarial).

A question is asked only when its answer is unique: colour needs the shape to appear once, shape
the colour once, relation two objects sharing a row (left/right) or a column (above/below).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tampkit.organism.scenes import CATEGORY_WEIGHTS, COLOURS, MAX_OBJECTS, SHAPES, Category, Scene, make_scene, train_statistics

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "relation", "presence")
POPE_SETTINGS: tuple[str, ...] = ("random", "popular", "adversarial")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
#: Accuracy of uniform guessing per type (presence is balanced yes/no).
CHANCE: dict[str, float] = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / MAX_OBJECTS,
                            "relation": 1 / len(RELATIONS), "presence": 0.5}


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


def colour_questions(scene: Scene) -> list[SceneQuestion]:
    out = []
    for shape in SHAPES:
        holders = [o for o in scene.objects if o.shape == shape]
        if len(holders) == 1:
            out.append(SceneQuestion(scene, "colour", f"what colour is the {shape} ?", holders[0].colour))
    return out


def shape_questions(scene: Scene) -> list[SceneQuestion]:
    out = []
    for colour in COLOURS:
        holders = [o for o in scene.objects if o.colour == colour]
        if len(holders) == 1:
            out.append(SceneQuestion(scene, "shape", f"what shape is the {colour} object ?", holders[0].shape))
    return out


def count_question(scene: Scene) -> SceneQuestion:
    return SceneQuestion(scene, "count", "how many objects are there ?", NUMBERS[len(scene.objects)])


def relation_questions(scene: Scene) -> list[SceneQuestion]:
    """Every ordered pair of objects in the same row or the same column."""
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


def absent_category(scene: Scene, setting: str, rng: random.Random) -> Category | None:
    """A category not in the scene, drawn as POPE's setting says; None if every one is present."""
    present = scene.categories()
    absent = [c for c in CATEGORY_WEIGHTS if c not in present]
    if not absent:
        return None
    if setting == "random":
        return rng.choice(absent)
    frequency, together = train_statistics()
    if setting == "popular":
        ranked = sorted(absent, key=lambda c: (-frequency[c], c))
    elif setting == "adversarial":
        ranked = sorted(absent, key=lambda c: (-sum(together[p][c] for p in present), c))
    else:
        raise ValueError(f"setting must be one of {POPE_SETTINGS}, got {setting!r}")
    return rng.choice(ranked[:3])


def presence_questions(scene: Scene, setting: str, rng: random.Random) -> list[SceneQuestion]:
    """One "yes" (a present category) and one "no" (an absent one drawn by `setting`)."""
    present = sorted(scene.categories())
    absent = absent_category(scene, setting, rng)
    if absent is None:
        return []
    yes = rng.choice(present)
    return [SceneQuestion(scene, "presence", f"is there a {yes[0]} {yes[1]} ?", "yes", setting),
            SceneQuestion(scene, "presence", f"is there a {absent[0]} {absent[1]} ?", "no", setting)]


def scene_questions(scene: Scene) -> list[SceneQuestion]:
    """One question of each type the scene allows (picked at random among the possible ones),
    presence as a yes/no pair in the POPE setting `index % 3`, in a shuffled order."""
    rng = random.Random(f"questions:{scene.id}")
    out: list[SceneQuestion] = [count_question(scene)]
    for options in (colour_questions(scene), shape_questions(scene), relation_questions(scene)):
        if options:
            out.append(rng.choice(options))
    out += presence_questions(scene, POPE_SETTINGS[scene.index % len(POPE_SETTINGS)], rng)
    rng.shuffle(out)
    return out


def split_questions(split: str, scenes: int, start: int = 0) -> list[SceneQuestion]:
    """The questions of scenes start..start+scenes-1 of a split."""
    return [q for i in range(start, start + scenes) for q in scene_questions(make_scene(split, i))]


def vocabulary() -> list[str]:
    """Every word a question, an answer or a caption can contain (the organism's tokenizer)."""
    from tampkit.organism.scenes import COLUMNS, ROWS, SIZES

    words = {"what", "colour", "is", "the", "shape", "object", "how", "many", "objects", "are", "there", "?",
             "where", "relative", "to", "a", "at", "on", "background", "plain", "textured", ":", ",",
             "user", "assistant", "centre", "describe", "scene", "."}
    words |= set(COLOURS) | set(SHAPES) | set(SIZES) | set(NUMBERS) | set(RELATIONS) | {"yes", "no"}
    words |= set(ROWS) | set(COLUMNS) | {str(n) for n in range(MAX_OBJECTS + 1)}
    return sorted(words)
