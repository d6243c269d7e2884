"""What a model that never looks at the image scores on the same test questions: the yardstick every
organism number stands next to.

Two blind predictors, both fitted on the training stream (never on the scenes they are scored on):
- `most_common`: the most frequent training answer of each question type;
- `text_prior`: the most frequent training answer for the exact question text (falling back to the
  type's most common answer for a text never seen in training). This is the strongest cheap blind
  model: what a language model would learn if it ignored its image tokens.
Uniform chance (`questions.CHANCE`) is reported beside them, but a model "sees" only where it beats
these, not chance.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache
from typing import Any

from tampkit.organism.questions import CHANCE, SceneQuestion, split_questions

#: Training scenes the blind predictors are fitted on (more than any test split, fewer than training).
BLIND_FIT_SCENES = 6000
BASELINES: tuple[str, ...] = ("text_prior", "most_common")


def _most_common(counter: Counter[str]) -> str:
    """Highest count, ties broken by the answer's text so the predictor is deterministic."""
    return min(counter, key=lambda answer: (-counter[answer], answer))


def fit_blind(train: list[SceneQuestion]) -> dict[str, dict[str, str]]:
    """{"by_type": {kind: answer}, "by_text": {question text: answer}} from training questions."""
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    by_text: dict[str, Counter[str]] = defaultdict(Counter)
    for q in train:
        by_type[q.kind][q.answer] += 1
        by_text[q.question][q.answer] += 1
    return {"by_type": {k: _most_common(c) for k, c in by_type.items()},
            "by_text": {t: _most_common(c) for t, c in by_text.items()}}


@lru_cache(maxsize=2)
def fitted_on_training(fit_scenes: int = BLIND_FIT_SCENES) -> dict[str, dict[str, str]]:
    """`fit_blind` on the first `fit_scenes` training scenes, once per process (a sweep evaluates
    many results in one process; do not mutate the returned dicts)."""
    return fit_blind(split_questions("train", fit_scenes))


def blind_predictions(fitted: dict[str, dict[str, str]], questions: list[SceneQuestion], baseline: str) -> list[str]:
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    by_type = fitted["by_type"]
    if baseline == "most_common":
        return [by_type.get(q.kind, "") for q in questions]
    return [fitted["by_text"].get(q.question, by_type.get(q.kind, "")) for q in questions]


def blind_logs(fitted: dict[str, dict[str, str]], questions: list[SceneQuestion], baseline: str) -> list[dict[str, Any]]:
    """Per-question records shaped like `scene_qa`'s, so the same accuracy breakdown applies."""
    return [{"id": q.id, "type": q.kind, "setting": q.setting, "question": q.question, "answer": q.answer,
             "prediction": p, "correct": p == q.answer}
            for q, p in zip(questions, blind_predictions(fitted, questions, baseline))]


def blind_baselines(questions: list[SceneQuestion], fit_scenes: int = BLIND_FIT_SCENES) -> dict[str, dict[str, float]]:
    """{baseline: accuracy breakdown (as `scene_qa` names it)} on `questions`, fitted on the first
    `fit_scenes` training scenes."""
    from tampkit.organism.scene_qa import accuracy_by_type

    fitted = fitted_on_training(fit_scenes)
    return {b: accuracy_by_type(blind_logs(fitted, questions, b)) for b in BASELINES}


#: Prefixes of the reference metrics the evaluate stage records beside a model's scene accuracy.
REFERENCE_PREFIXES: dict[str, str] = {"blind_text_prior_": "blind: text prior",
                                      "blind_most_common_": "blind: most common",
                                      "uniform_chance_": "uniform chance"}


def uniform_chance(questions: list[SceneQuestion]) -> dict[str, float]:
    """Uniform guessing's expected accuracy, broken down as `scene_qa` names its metrics."""
    from tampkit.organism.scene_qa import accuracy_by_type

    logs = [{"type": q.kind, "setting": q.setting, "correct": CHANCE[q.kind]} for q in questions]
    return accuracy_by_type(logs)


def reference_metrics(questions: list[SceneQuestion]) -> dict[str, float]:
    """Flat metrics a result stores beside its scene accuracy on `questions`: each blind baseline and
    uniform chance, every key of the breakdown prefixed (`blind_text_prior_scene_accuracy_colour`),
    so a table can show what a model that never looks gets on exactly those questions."""
    out = {f"blind_{b}_{k}": v for b, metrics in blind_baselines(questions).items() for k, v in metrics.items()}
    return out | {f"uniform_chance_{k}": v for k, v in uniform_chance(questions).items()}
