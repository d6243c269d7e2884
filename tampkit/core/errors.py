"""One exception type for bad user input, so the CLI can print one line and exit 2."""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """Bad input from the user: names the field, what was given and what is allowed."""

    def __init__(self, field: str, message: str, allowed: Iterable[str] | str | None = None) -> None:
        self.field = field
        text = f"{field}: {message}"
        if allowed is not None:
            allowed_text = allowed if isinstance(allowed, str) else ", ".join(allowed)
            text += f" (allowed: {allowed_text})"
        super().__init__(text)


class StageFailed(RuntimeError):
    """A stage ran but part of it failed (an evaluation suite): its outputs and a record marked
    failed are on disk for inspection, and the stage reruns next time instead of being reused.

    `summary` says what failed; `hint` what to do (where the outputs are, or how to keep them)."""

    def __init__(self, summary: str, hint: str) -> None:
        self.summary = summary
        self.hint = hint
        super().__init__(f"{summary}; {hint}")
