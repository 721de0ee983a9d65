"""Flags that also take their default from an INFERD_* variable, and Triton's boolean spelling."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

ENV_PREFIX = "INFERD_"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class FlagParser:
    """Adds flags whose default comes from the matching INFERD_* variable."""

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        environ: dict[str, str],
        group: argparse._ArgumentGroup | None = None,
    ) -> None:
        self.parser = parser
        self.environ = environ
        self._target = group or parser  # where the flags show in --help

    def group(self, title: str, description: str) -> FlagParser:
        """The same, for flags listed under their own heading in --help."""
        return FlagParser(
            self.parser, self.environ, self.parser.add_argument_group(title, description)
        )

    def add(
        self,
        flag: str,
        *aliases: str,
        type: Callable[[str], Any] = str,
        default: Any = None,
        help: str,
        multiple: bool = False,
        env_separator: str | None = ",",
        **kwargs: Any,
    ) -> None:
        """`env_separator` splits a `multiple` flag's variable into values (None: whitespace,
        for values that contain commas themselves)."""
        env = _env_name(flag)
        raw = self.environ.get(env)
        if raw is not None:
            try:
                values = raw.split(env_separator)
                default = [type(v) for v in values if v] if multiple else type(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.parser.error(f"{env}={raw!r}: {exc}")
        shown = f"{help} [env {env}; default: {default if default not in (None, []) else 'none'}]"
        if multiple:
            kwargs.setdefault("action", "append")
        if type is parse_bool:
            kwargs.setdefault("nargs", "?")
            kwargs.setdefault("const", True)
        self._target.add_argument(flag, *aliases, type=type, default=default, help=shown, **kwargs)
