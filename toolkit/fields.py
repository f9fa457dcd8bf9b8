"""Config fields that declare what they are, once, on the field: the default, the allowed values, the sources
that set the value, the family of models where the field acts and when it has no effect.

    ffn: str = choice("swiglu", "gelu", cite={"DiT": "GELU MLP"})        # the default first
    bottleneck_dim: int = switch(128, family="transformer", inert_when="patch_embed=linear")
    dropout_band: List[float] = switch(factory=lambda: [0.25, 0.75], inert_when="dropout=0")

The metadata keys (all optional):
  cite        paper key -> where that paper or its official code sets or motivates this field, and the value
              it uses ("sec. 3.2, Fig. 2(C): pixel-wise AdaLN"); the paper keys are a bibliography's
              (models/papers.py for the model zoo and the training config)
  family      the values of the class's family field where the field acts (default: all); the class names
              its family field in a plain class attribute, `FAMILY_FIELD = "architecture"` (`ModelConfig`)
  inert_when  the settings under which the field has no effect: a condition "key=value" or
              "key=value, key!=value" (comma: and; values read as YAML scalars: false, null, 0, C), or a
              tuple of conditions (or)

Everything else is derived: `check_choices` refuses values outside `choices`, `inert_fields` lists the fields
without effect on a config with the setting that makes it so, the `--help` texts and the switch tables of
docs/models.md and docs/training.md show the citations and conditions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import yaml

from .errors import ConfigError, closest, unknown

META_KEYS = ("cite", "family", "inert_when")


def _metadata(meta: dict) -> dict:
    extra = set(meta) - set(META_KEYS)
    if extra:
        raise TypeError(f"unknown field metadata {sorted(extra)}; expected {list(META_KEYS)}")
    out = dict(meta)
    for key in ("family", "inert_when"):                 # one string or several: always a tuple
        if isinstance(out.get(key), str):
            out[key] = (out[key],)
    return out


def choice(default: str, *others: str, **meta):
    """A switch with a fixed set of values: its default, the other allowed values and its metadata."""
    return field(default=default, metadata={"choices": (default, *others), **_metadata(meta)})


def switch(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **meta):
    """Any other field with its metadata; `factory` builds a mutable default (a list)."""
    if factory is not None:
        return field(default_factory=factory, metadata=_metadata(meta))
    return field(default=default, metadata=_metadata(meta))


def check_choices(cfg: Any, prefix: str) -> None:
    """Every field declared with `choice` (recursively through nested dataclasses) holds an allowed value."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise unknown(f"{prefix}{f.name}", value, allowed)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")


def choices_of(cls: type, name: str) -> tuple:
    """The allowed values of a switch declared with `choice`."""
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


# ---- reading the metadata back ------------------------------------------------------------------------

@dataclass(frozen=True)
class Clause:
    name: str                                  # a field of the same class
    value: Any                                 # read as a YAML scalar
    text: str                                  # as declared: "pixel_pathway=false"
    negated: bool = False                      # "key!=value"

    def holds(self, cfg: Any) -> bool:
        return (getattr(cfg, self.name) == self.value) != self.negated


@dataclass(frozen=True)
class Condition:
    """One setting under which a field has no effect: every clause holds."""
    text: str                                  # as declared: "ffn=swiglu, pixel_pathway=false"
    clauses: tuple[Clause, ...]

    def holds(self, cfg: Any) -> bool:
        return all(clause.holds(cfg) for clause in self.clauses)


def parse_condition(text: str, cls: type, owner: str) -> Condition:
    """"key=value, key!=value" over the fields of `cls` (declared on its field `owner`); a one-line error
    for an unknown field or value, naming the closest valid one."""
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def refuse(reason: str, suggestion=None) -> ConfigError:
        return ConfigError(f"{owner}.inert_when", text, reason, source=cls.__name__,
                           suggestion=None if suggestion is None else str(suggestion))

    clauses = []
    for clause in text.split(","):
        name, sep, raw = (part.strip() for part in clause.partition("="))
        negated = name.endswith("!")
        name = name.rstrip("!").strip()
        if not sep or not name or not raw:
            raise refuse(f"expected key=value clauses, got {clause.strip()!r}")
        if name not in fields:
            raise refuse(f"unknown field {name!r}", closest(name, fields))
        value = yaml.safe_load(raw)
        allowed = fields[name].metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise refuse(f"unknown value {raw!r} of {name}, expected one of {list(allowed)}", closest(raw, allowed))
        clauses.append(Clause(name, value, f"{name}{'!=' if negated else '='}{raw}", negated))
    return Condition(text, tuple(clauses))


@dataclass(frozen=True)
class FieldMeta:
    """What one field declares about itself (see the module docstring)."""
    choices: tuple | None
    cite: Mapping[str, str]
    family: tuple[str, ...] | None             # None: every family
    inert_when: tuple[Condition, ...]


@lru_cache(maxsize=None)
def field_meta(cls: type) -> dict[str, FieldMeta]:
    """Field name -> its metadata, for every field of a dataclass (conditions parsed and checked)."""
    return {f.name: FieldMeta(f.metadata.get("choices"), dict(f.metadata.get("cite", {})),
                              f.metadata.get("family"),
                              tuple(parse_condition(text, cls, f.name) for text in f.metadata.get("inert_when", ())))
            for f in dataclasses.fields(cls)}


def meta_at(root: Any, key: str) -> FieldMeta | None:
    """The metadata of the field a dotted key names under a dataclass instance ("eval.sampler.kind"), or
    None when there is no such field."""
    *path, name = key.split(".")
    node = root
    for part in path:
        node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node):
            return None
    return field_meta(type(node)).get(name)


def no_effect(cls: type, name: str) -> str:
    """When field `name` has no effect, as one line: the families where it does not act
    (`architecture=unet`), then its declared conditions; "" when it always acts."""
    meta, family_field = field_meta(cls)[name], getattr(cls, "FAMILY_FIELD", None)
    others = [] if meta.family is None else [f"{family_field}={value}" for value in choices_of(cls, family_field)
                                             if value not in meta.family]
    conditions = [" and ".join(clause.text for clause in c.clauses) for c in meta.inert_when]
    return ", or ".join(others + conditions)


def inert_fields(cfg: Any) -> dict[str, str]:
    """The fields without effect under `cfg`, each with the setting that makes it so: the family
    (`architecture=unet`), else the first declared condition that holds. The reason names the switches a
    user turns within the family: clauses on the family field, or on a field that does not act in this
    family, only say which family a condition is about and are left out."""
    metas, family_field = field_meta(type(cfg)), getattr(type(cfg), "FAMILY_FIELD", None)
    family = getattr(cfg, family_field) if family_field else None

    def acts(name: str) -> bool:
        return metas[name].family is None or family in metas[name].family

    inert = {}
    for name, meta in metas.items():
        if not acts(name):
            inert[name] = f"{family_field}={family}"
            continue
        condition = next((c for c in meta.inert_when if c.holds(cfg)), None)
        if condition is not None:
            inert[name] = ", ".join(clause.text for clause in condition.clauses
                                    if clause.name != family_field and acts(clause.name)) or condition.text
    return inert
