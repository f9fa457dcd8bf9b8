"""The documentation of config fields: the comment beside each dataclass field in its source.

Every field of `ModelConfig` and of the training config (harness/config.py) is documented once, by the
comment on its line and the indented comment lines under it:

    ffn: str = choice("swiglu", "gelu")   # swiglu (PixelDiT/JiT code) | gelu (DiT)
    kind: str = choice("flow", "ddpm")
                                       # flow: rectified flow | ddpm: DDPM linear schedule

`field_docs(cls)` reads those comments back (parsed once per source file), so `--help` shows the same text
a reader of the source sees. Section comments at the indentation of the fields (`# ---- input ----`) belong
to no field: `field_sections(cls)` gives the section each field is declared in (the switch tables of docs/models.md
and docs/training.md are grouped by them).
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
from functools import lru_cache


@lru_cache(maxsize=None)
def _parsed(path: str) -> tuple[ast.Module, dict[int, tuple[int, str]], list[str]]:
    """(syntax tree, line -> (column, text) of its comment, source lines) of a source file."""
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    comments = {token.start[0]: (token.start[1], token.string.lstrip("#").strip())
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    return ast.parse(source), comments, source.splitlines()


def _class_node(tree: ast.Module, qualname: str) -> ast.ClassDef | None:
    body = tree.body
    node = None
    for name in qualname.split("."):
        node = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == name), None)
        if node is None:
            return None
        body = node.body
    return node


def _fields_in_source(cls: type):
    """(field statement, comments, source lines) of each annotated assignment in the class body."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:                            # a class without a source file
        return
    tree, comments, lines = _parsed(path)
    node = _class_node(tree, cls.__qualname__)
    if node is None:
        return
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            yield stmt, comments, lines


def _own_docs(cls: type) -> dict[str, str]:
    docs = {}
    for stmt, comments, lines in _fields_in_source(cls):
        parts = [comments[row][1] for row in range(stmt.lineno, stmt.end_lineno + 1) if row in comments]
        row = stmt.end_lineno + 1                # continuation: comment-only lines indented past the field
        while row in comments and lines[row - 1].lstrip().startswith("#") and comments[row][0] > stmt.col_offset:
            parts.append(comments[row][1])
            row += 1
        docs[stmt.target.id] = " ".join(part for part in parts if part)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment (empty when it has none), for a dataclass and the dataclasses it extends."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({k: v for k, v in _own_docs(klass).items() if v or k not in docs})
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


SECTION = "----"                                 # a section comment: `# ---- title -------`


def field_sections(cls: type) -> dict[str, str]:
    """Field name -> the title of the section comment above it in its class (empty before the first), for a
    dataclass."""
    sections, title, row = {}, "", None
    for stmt, comments, lines in _fields_in_source(cls):
        if row is None:                          # from the class statement: earlier classes' sections are not its
            row = _class_node(_parsed(inspect.getsourcefile(cls))[0], cls.__qualname__).lineno
        for line in range(row + 1, stmt.lineno):
            col_text = comments.get(line)
            if col_text and col_text[0] == stmt.col_offset and col_text[1].startswith(SECTION):
                title = col_text[1].strip("- ")
        sections[stmt.target.id] = title
        row = stmt.end_lineno
    return sections


def value_text(value) -> str:
    """A field's value as YAML writes it: null, true/false, lists in brackets."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(list(value) if isinstance(value, tuple) else value)


# ---- switch tables (docs/models.md's and docs/training.md's) ---------------------------------------------

TABLE_HEADER = "| switch | values (default first) | what it does | set by | no effect when |"


def switch_table(cls: type, prefix: str = "", untitled: str = "") -> str:
    """Every field of a config dataclass as Markdown, one table per section of the class (the fields before its
    first section under `untitled`): the field (named `prefix` + name), its values (the default first), its doc,
    the papers that set it (`cite=`) and when it has no effect (`family=`, `inert_when=`)."""
    from .fields import field_meta, no_effect

    docs, sections, defaults = field_docs(cls), field_sections(cls), cls()
    cell = lambda text: text.replace("|", "\\|")                          # noqa: E731
    lines, section = [], None
    for name, meta in field_meta(cls).items():
        if sections[name] != section:
            section = sections[name]
            lines += ["", f"**{section or untitled}**", "", TABLE_HEADER, "| --- | --- | --- | --- | --- |"]
        values = " / ".join(f"`{v}`" for v in meta.choices or [value_text(getattr(defaults, name))])
        lines.append(f"| `{prefix}{name}` | {values} | {cell(docs[name])} | {', '.join(meta.cite)} | "
                     f"{cell(no_effect(cls, name))} |")
    return "\n".join(lines[1:]) + "\n"


def marked_span(text: str, begin: str, end: str, source: str) -> tuple[int, int]:
    """The character span between a document's two marker lines (a generated table's place)."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        from .errors import ConfigError
        raise ConfigError(None, reason=f"no table markers ({begin} ... {end})", source=source)
    return start + len(begin) + 1, stop


def write_marked_span(path, begin: str, end: str, content: str) -> None:
    """Replace what lies between a document's two marker lines."""
    from .files import atomic_write_text
    text = path.read_text()
    start, stop = marked_span(text, begin, end, str(path))
    atomic_write_text(path, text[:start] + content + text[stop:])
