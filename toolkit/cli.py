"""What every ditlab command line shares (`run_sweep.py`, `python -m harness.train`, `python -m harness.audit`,
`python -m models.inspect`).

- Errors are one line on stderr and exit code 2, in one format:
  `error: WHERE: KEY[=VALUE]: reason (did you mean X?)`, WHERE being the file the key is in, `overrides` (a
  `key=value` of the command line) or `command line` (an option or argument); the suggestion is the closest
  valid key, preset, label, option or verb. A failure that names its own file and cause (`LocatedError`: a
  damaged checkpoint, a full disk, an image that does not decode) is one line too, `error: FILE: cause`, exit 1.
- Libraries are quiet unless `-v`: no MLflow INFO lines, no "View run" links, no notebook-kernel warnings.
- `--help` answers at once: this module imports nothing heavy, and commands import torch, mlflow and hydra
  only once their arguments are parsed (tests/test_cli.py checks it).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

from .errors import ConfigError, LocatedError, closest

COMMAND_LINE = "command line"
# Library settings for a quiet run, read from the environment, so the jobs and servers a command starts (which
# inherit it) are quiet too. Set before mlflow is imported: it configures its loggers on import.
QUIET_ENVIRONMENT = {
    "DITLAB_QUIET": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",                  # "Creating initial MLflow database tables", alembic
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",   # "View run ... at http://..." of a server soon gone
}


def quiet(verbose: bool = False) -> None:
    """Silence library chatter in this process and those it starts, unless `verbose` (`-v`)."""
    if not verbose:
        for key, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(key, value)


def kernel_arguments() -> list[str]:
    """Arguments of a notebook kernel: quiet (no "running over TCP without encryption") unless `-v`."""
    return ["--IPKernelApp.log_level=ERROR"] if os.environ.get("DITLAB_QUIET") == "1" else []


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="let libraries talk (MLflow INFO lines, run links, kernel warnings)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusals are `ConfigError`s in the common format, with the closest valid option or choice:
    `error: command line: --wiat: unrecognized argument (did you mean --wait?)`."""

    def error(self, message: str):
        raise argument_error(message, _options(self))


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser and its sub-commands."""
    found = []
    for action in parser._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _options(sub)
    return sorted(set(found))


def argument_error(message: str, options: list[str]) -> ConfigError:
    """An argparse message as a ConfigError (argparse's wording, Python 3.11)."""
    if match := re.match(r"unrecognized arguments: (\S+)", message):
        word = match.group(1)
        suggestion = closest(word, options) if word.startswith("-") else None
        return ConfigError(word, reason="unrecognized argument", source=COMMAND_LINE, suggestion=suggestion)
    if match := re.match(r"argument ([^:]+): invalid choice: '([^']*)' \(choose from (.*)\)", message):
        key, value, choices = match.group(1).split("/")[-1], match.group(2), re.findall(r"'([^']*)'", match.group(3))
        suggestion = closest(value, choices)
        return ConfigError(key, value, "unknown value" + ("" if suggestion else f", expected one of {choices}"),
                           source=COMMAND_LINE, suggestion=suggestion)
    if match := re.match(r"argument ([^:]+): (.*)", message):
        return ConfigError(match.group(1).split("/")[-1], reason=match.group(2), source=COMMAND_LINE)
    return ConfigError(None, reason=message, source=COMMAND_LINE)


def report(err: ConfigError, source: str = COMMAND_LINE) -> int:
    """Print a refusal in the common format; returns the exit code 2."""
    print(f"error: {err if err.source else err.at(source=source)}", file=sys.stderr)
    return 2


def run(main: Callable[[], int], source: str = COMMAND_LINE) -> int:
    """`main()`, with a ConfigError printed in the common format (`source` where the error names none)."""
    try:
        return main()
    except ConfigError as err:
        return report(err, source)
    except LocatedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:                      # `... --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
