"""Warnings go through `logging` (logger "tampkit"), so every driver shows them where its users look:
the CLI prints them as `tamp: warning: ...` lines (`tampkit.reporting.console`, through tqdm, so
progress bars stay intact), the Prefect tasks forward them to the run's logs, and a stage record
keeps the ones its stage raised."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("tampkit")


def warn(message: str) -> None:
    log.warning(message)


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """The warnings raised inside the block (for a stage's record)."""
    collector = _Collector()
    log.addHandler(collector)
    try:
        yield collector.messages
    finally:
        log.removeHandler(collector)
