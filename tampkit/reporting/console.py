"""The `tamp` command's terminal: warnings and errors as one `tamp: warning: ...` line each, written
through tqdm so that progress bars stay intact (the warnings themselves go through `tampkit.core.log`)."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

from tampkit.core.log import log


class TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"tamp: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def install_cli_handler() -> None:
    """For the `tamp` command: warnings and errors as one line each on the terminal."""
    if not any(isinstance(h, TqdmHandler) for h in log.handlers):
        handler = TqdmHandler(logging.WARNING)
        log.addHandler(handler)
