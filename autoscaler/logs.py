"""structlog set-up: readable lines on a terminal, JSON lines for log shippers."""

from __future__ import annotations

import logging
import sys

import structlog


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    """A logger on whatever ``sys.stderr`` is now: a stream bound at configure time may be closed
    later (a test runner's capture, a daemon's redirected stderr), and logging must not fail then."""
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(*, json_lines: bool = False, level: str = "info") -> None:
    """Log to stderr; ``json_lines`` for one JSON object per event."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
