"""What every command shares: the one user-error wrapper, and options generated from the config dataclasses.

An option's help text and default come from the dataclass field it sets, so `--help`, the config file
and docs/options.md (generated from these definitions) cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from diffeval.harness.core.config import from_dict, load_config_file
from diffeval.harness.core.errors import DiffevalError


class UserError(click.ClickException):
    """Printed as one line, `Error: …`, exit status 2 (a usage problem, never a traceback)."""

    exit_code = 2


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A user mistake (bad input, bad run directory, unwritable file) ends in one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiffevalError as e:
            raise UserError(" ".join(str(e).split())) from None
        except OSError as e:
            if e.filename is None:
                raise
            raise UserError(f"{e.strerror or e}: {e.filename}") from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _field(cls: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def field_default(cls: type, name: str) -> Any:
    f = _field(cls, name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_option(cls: type, name: str, *decls: str, fixed_default: bool = False, **kw: Any) -> Callable:
    """`--name` for dataclass field `cls.name`: its help, its type, and its default shown in --help.

    By default the option's value is None when not given (so a --config file can set the field and the
    dataclass supplies the default); with `fixed_default` the default is passed on explicitly."""
    f = _field(cls, name)
    default = field_default(cls, name)
    opt_name = decls or (f"--{name.replace('_', '-')}",)
    if isinstance(default, bool) and "is_flag" not in kw and not any("/" in d for d in opt_name):
        kw["is_flag"] = True
    elif "type" not in kw and "multiple" not in kw and isinstance(default, (int, float)) and not isinstance(default, bool):
        kw["type"] = type(default)
    shown = None if default is None or default is False or default in ((), "") else (
        ", ".join(map(str, default)) if isinstance(default, tuple) else str(default))
    help_text = f.metadata.get("help", "")
    if fixed_default:
        kw.setdefault("default", default)
        kw.setdefault("show_default", shown is not None)
    else:
        # None when not given (a --config file may set the field; the dataclass supplies the default)
        kw.setdefault("default", None)
        if "show_default" in kw:
            shown = kw.pop("show_default")
        if shown is not None:
            help_text += f"  [default: {shown}]"
    return click.option(*opt_name, name, help=help_text, **kw)


def apply(options: list[Callable]) -> Callable[[Callable], Callable]:
    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def build_config(cls: type, config_file: str | None, **flags: Any) -> Any:
    """`cls` from the config file (if any) with the given flags overriding it; unknown keys are an error."""
    data: dict[str, Any] = load_config_file(config_file) if config_file else {}
    for key, value in flags.items():
        if value is None or value == ():
            continue
        data[key] = [t.strip() for t in value.split(",") if t.strip()] if key == "tasks" else value
    return from_dict(cls, data, source=config_file or "options")
