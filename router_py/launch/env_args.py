"""argparse flags that fall back to environment variables, as TGI's clap ``#[clap(long, env)]`` flags do.

``--max-input-tokens`` reads ``MAX_INPUT_TOKENS`` when not given on the command line; boolean flags accept
``1/true/yes/on``; repeatable flags read a comma-separated list.
"""

from __future__ import annotations

import argparse
from typing import Any

from router_py import env as environment

_TRUE = {"1", "true", "yes", "on"}


def env_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_").upper()


class EnvArgs:
    """Wraps a parser; :meth:`add` is ``add_argument`` with the env fallback and an ``[env: X]`` help note."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add(self, flag: str, **kw: Any) -> None:
        env = env_name(flag)
        raw = environment.flag_value(env)
        if raw:
            kw["default"] = self._convert(flag, env, raw, kw)
        kw["help"] = f"{kw.get('help', '')} [env: {env}]".strip()
        self.parser.add_argument(flag, **kw)

    def _convert(self, flag: str, env: str, raw: str, kw: dict[str, Any]) -> Any:
        action = kw.get("action")
        if action == "store_true":
            return raw.strip().lower() in _TRUE
        if action == "append":
            return [item for item in raw.split(",") if item]
        try:
            value = kw.get("type", str)(raw)
        except ValueError:
            self.parser.error(f"{env}={raw!r} is not a valid value for {flag}")
        if "choices" in kw and value not in kw["choices"]:
            self.parser.error(f"{env}={raw!r}: {flag} must be one of {', '.join(kw['choices'])}")
        return value
