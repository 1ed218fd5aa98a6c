"""argparse flags that fall back to environment variables, as TGI's clap ``#[clap(long, env)]`` flags do.

``--max-input-tokens`` reads ``MAX_INPUT_TOKENS`` when not given on the command line; boolean flags accept
``1/true/yes/on`` and ``0/false/no/off`` (anything else is a usage error, not a silent false); repeatable
flags read a comma-separated list, which the command line replaces (clap: the flag wins) rather than extends.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from router_py import env as environment


def parse_bool(raw: str) -> bool:
    """TGI's boolean env values: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0/true/false, got {raw!r}")


def env_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_").upper()


class AppendOverEnv(argparse.Action):
    """``action="append"`` whose first command-line value replaces the default (the environment's list)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*kept, values])


class EnvArgs:
    """Wraps a parser; :meth:`add` is ``add_argument`` with the env fallback and an ``[env: X]`` help note."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add(self, flag: str, *aliases: str, **kw: Any) -> None:
        """``flag`` (the long name, which names the variable) and short ``aliases`` such as ``-p``."""
        env = env_name(flag)
        raw = environment.flag_value(env)
        if raw:
            kw["default"] = self._convert(flag, env, raw, kw)
        if kw.get("action") == "append":
            kw["action"] = AppendOverEnv
        kw["help"] = f"{kw.get('help', '')} [env: {env}]".strip()
        self.parser.add_argument(*aliases, flag, **kw)

    def _convert(self, flag: str, env: str, raw: str, kw: dict[str, Any]) -> Any:
        action = kw.get("action")
        if action == "store_true":
            try:
                return parse_bool(raw)
            except ValueError:
                self.parser.error(f"{env}={raw!r} is not a valid value for {flag}: expected 1/0/true/false")
        if action == "append":
            return [item for item in raw.split(",") if item]
        try:
            value = kw.get("type", str)(raw)
        except ValueError:
            self.parser.error(f"{env}={raw!r} is not a valid value for {flag}")
        if "choices" in kw and value not in kw["choices"]:
            self.parser.error(f"{env}={raw!r}: {flag} must be one of {', '.join(kw['choices'])}")
        return value
