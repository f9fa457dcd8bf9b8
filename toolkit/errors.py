"""One error type for everything a user can get wrong, and the closest-match suggestions it carries.

A `ConfigError` is data (the dotted key, the value, the reason, where it came from, the closest valid
alternative) and prints as one line: `FILE: KEY=VALUE: reason (did you mean X?)`. Every layer raises it;
the command line (`toolkit.cli`) prints it and exits with code 2.
"""
from __future__ import annotations

import difflib
import errno
from typing import Any

_NO_VALUE = object()


class ConfigError(ValueError):
    """A configuration that cannot be built, as data: the dotted `key`, its `value` and the `reason`.

    `str()` is one line, `KEY=VALUE: reason` (`KEY: reason` without a value), prefixed by `source`
    (a file, or "overrides") when the caller knows where the key came from; `suggestion` names the
    closest valid value or key when there is one.
    """

    def __init__(self, key: str | None, value: Any = _NO_VALUE, reason: str = "", *,
                 source: str | None = None, suggestion: str | None = None):
        self.key, self.value, self.reason = key, value, reason
        self.source, self.suggestion = source, suggestion
        super().__init__(str(self))

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def at(self, source: str | None = None, key: str | None = None) -> "ConfigError":
        """The same error located elsewhere: in a file, or under another key (a sweep file's path to it)."""
        return type(self)(self.key if key is None else key, self.value, self.reason,
                          source=self.source if source is None else source, suggestion=self.suggestion)

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        value = f"={_show(self.value)}" if self.has_value else ""
        head = f"{self.key}{value}" if self.key else ""
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        return where + ": ".join(part for part in (head, self.reason) if part) + hint


def _show(value: Any) -> str:
    """Values as the user typed them: strings quoted, booleans as YAML writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(list(value) if isinstance(value, tuple) else value)


def closest(word: str, options) -> str | None:
    """The option nearest to a mistyped word, or None when nothing is close."""
    found = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return found[0] if found else None


def unknown(key: str, value: Any, options, what: str = "value") -> ConfigError:
    """`key` (=`value`) is not one of `options`: the closest option when one is near, else the whole list."""
    options = list(options)
    suggestion = closest(value, options)
    reason = f"unknown {what}" if suggestion else f"unknown {what}, expected one of {options}"
    return ConfigError(key, value, reason, suggestion=suggestion)


def closest_key(key: str, keys) -> str | None:
    """The valid dotted key a mistyped one most likely meant: one with the same last part
    (`train.lr` -> `optim.lr`), else the nearest spelling."""
    keys = list(keys)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    return closest(key, same_leaf) or (same_leaf[0] if len(same_leaf) == 1 else None) or closest(key, keys)


def from_omegaconf(err: Exception, source: str | None, keys=(), prefix: str = "") -> ConfigError:
    """An OmegaConf (or hydra-wrapped) error as a ConfigError: the key, the first line of the reason, and
    the closest valid key among `keys` when the key is unknown. Hydra hides the OmegaConf error in the cause."""
    cause = err.__cause__ if err.__cause__ is not None else err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    key = getattr(cause, "full_key", None) or next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    reason = lines[0] if lines else type(err).__name__
    key = f"{prefix}{key}" if key else None
    unknown = key is not None and key not in keys and ("not in" in reason or "not found" in reason)
    return ConfigError(key, reason=reason.replace(f"full_key: {key}", "").strip(), source=source,
                       suggestion=closest_key(key, keys) if unknown else None)


# ---- why something failed: one line naming the cause (and the file) ------------------------------------------

MAX_REASON = 1000               # characters of a reason (a tag, a status line)
_TRACEBACK = "Traceback (most recent call last):"


class LocatedError(RuntimeError):
    """A failure whose message is the whole reason: one line naming the file and the cause (a damaged checkpoint,
    an image that does not decode, a write that found the disk full). Shown as it is, without its type."""


def reason_line(text: str) -> str:
    """A stored or relayed reason as one line: a traceback's last line (the exception it ends with, as a worker
    process or a job's result relays it: torch's DataLoader, submitit), else its first line; at most MAX_REASON
    characters."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if any(_TRACEBACK in line for line in lines) else lines[0]
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 3] + "..."


def reason(err: BaseException) -> str:
    """Why `err` happened, in one line: a ConfigError or LocatedError as its message; an OSError with its errno's
    name, its message and its file; anything else as `Type: message`. A message relayed from another process
    (a traceback: a DataLoader worker's, a job's) gives its last line, the original exception's."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        files = [str(f) for f in (err.filename, err.filename2) if f is not None]
        name = errno.errorcode.get(err.errno, str(err.errno))
        return reason_line(f"{err.strerror} ({name})" + (": " + " -> ".join(files) if files else ""))
    message = str(err)
    line = reason_line(message)
    if _TRACEBACK in message:                     # relayed: the line is `module.Type: message`
        head, _, rest = line.partition(": ")
        if rest and head.rsplit(".", 1)[-1] == type(err).__name__:
            return rest if isinstance(err, (ConfigError, LocatedError)) else f"{type(err).__name__}: {rest}"
        return line
    if isinstance(err, (ConfigError, LocatedError)):
        return line
    return reason_line(f"{type(err).__name__}: {line}") if line else type(err).__name__
