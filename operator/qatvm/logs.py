"""Logging for the long-running commands: one line per event that matters to an operator."""

from __future__ import annotations

import logging


def setup(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Every HTTP request, and every handler that succeeded, would otherwise be a line.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
