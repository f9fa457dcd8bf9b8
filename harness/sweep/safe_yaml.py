"""Reading a YAML file a user (or anyone) wrote, without trusting it.

Refused, each in one line naming the file: a path that is not a regular file, a file too large to be a
sweep, bytes that are not UTF-8 text, invalid YAML, a key written twice in one mapping (PyYAML would
silently keep the last), and aliases that expand to more nodes than a sweep can hold (an "alias bomb":
PyYAML shares aliased nodes, so loading is cheap, but anything that walks or hashes the result is not).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ConfigError

MAX_BYTES = 1 << 20            # a sweep file is a page of text; 1 MiB is far beyond any real one
MAX_EXPANDED_NODES = 100_000   # nodes after expanding every alias


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue                          # unhashable: SafeLoader refuses it itself
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(str(key), reason=f"duplicate key (line {mark.line + 1}); write each key once")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded (memoised per node: linear in the file)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1                            # a cycle counts once (SafeLoader refuses recursion later)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def read_yaml(path: Path) -> tuple[str, Any]:
    """(text, data) of a YAML file, or a ConfigError whose source is the file."""
    where = str(path)
    if not path.exists():
        raise ConfigError(None, reason="file does not exist", source=where)
    if not path.is_file():
        raise ConfigError(None, reason="not a file (a directory?); give the sweep's YAML file", source=where)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(None, reason=f"{size} bytes: too large for a sweep file (limit {MAX_BYTES})", source=where)
    raw = path.read_bytes()
    if b"\0" in raw:
        raise ConfigError(None, reason="binary file (NUL bytes), not YAML text", source=where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(None, reason=f"not UTF-8 text (byte {err.start})", source=where) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise ConfigError(None, reason=f"aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                                           f"(an alias bomb?); write the values out", source=where)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as err:
        raise err.at(source=where) from None
    except RecursionError:
        raise ConfigError(None, reason="nested too deeply to be a sweep file", source=where) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(None, reason=f"invalid YAML{at}: {reason}", source=where) from None
    return text, data
