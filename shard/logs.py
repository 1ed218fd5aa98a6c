"""Logging setup: plain lines, or loguru-style JSON lines (``--json-output``) TGI's launcher parses."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``{"text": ..., "record": {"level": {"name": ...}, "message": ...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return json.dumps(
            {
                "text": message,
                "record": {
                    "level": {"name": record.levelname},
                    "message": message,
                    "name": record.name,
                    "time": {"timestamp": record.created},
                    "function": record.funcName,
                    "line": record.lineno,
                },
            }
        )


def setup_logging(level: str = "INFO", json_output: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter()
        if json_output
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
