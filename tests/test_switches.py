"""Each model switch's metadata, declared once on its field, is right and complete: a field declared without
effect (`family=`, `inert_when=`) changes nothing in the model, every other field changes the model (its
parameters or its output), the conditions name existing fields and values, the citations name papers of the
bibliography, and the switch tables of docs/models.md and docs/training.md are the ones the metadata generates."""
import dataclasses

import pytest
import torch
from conftest import ROOT, randomize

from harness.config import TrainConfig
from models.config import ModelConfig
from models.families import build_model, miniature
from models.inspect import TABLE_COMMAND, TABLE_FILE, switch_table, table_span
from models.papers import PAPERS
from models.presets import PRESETS, model_config
from toolkit.errors import ConfigError
from toolkit.fields import choice, choices_of, field_meta, switch

# Fields that act outside the network, so that no other value of theirs changes the model's parameters or
# output: the objective reads them (what the output means, the loss), the data pipeline, or the trainer.
OUTSIDE_THE_NETWORK = {
    "prediction": "the objective: what the output is (velocity, image, noise)",
    "flow_time": "the objective: the time convention of the network's input",
    "hint_loss_weight": "the loss: the weight of the revealed pixels",
    "latent_downsample": "the data: image pixels per input cell (an SD-VAE outside the model)",
    "init_from": "the trainer: the starting weights",
    "moe_loss_weight": "the loss: the weight of ProMoE's routing loss, which the model returns unweighted",
}
# Fields that may have no valid value building another model at miniature size, and why.
NO_OTHER_MODEL = {
    "time_embed_dim": "the flat model's time token is hidden_size wide: its one other valid value, hidden_size, "
                      "is what None means",
    "time_conditioning": "DiffiT blocks (tmsa) refuse JiT's in-context tokens",
    "in_context_tokens": "DiffiT blocks (tmsa) refuse in-context tokens",
    "architecture": "the U-Net refuses the pixel pathway and REPA",
    "pixel_pathway": "GT pixel hints (the seeds' code) need the pixel pathway",
    "token_routing": "DiffiT blocks (tmsa) see the whole grid: routing is refused with them",
    "moe_experts": "ProMoE's experts are SwiGLU FFNs of adaLN blocks: refused with GELU MLPs and DiffiT blocks",
    "ffn": "ProMoE's experts are SwiGLU FFNs: the GELU MLP is refused with them",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of tiny models: one thread each is ten times faster than two threads fighting on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def miniatures() -> dict[str, ModelConfig]:
    """Each preset's miniature (width 32; U-Nets with two ResBlocks per level, so that alternate blocks exist
    for `window_shift`; 4 blocks with token routing, so that its route can move), once (presets that differ
    only in size share one)."""
    out: dict[str, ModelConfig] = {}
    for name in PRESETS:
        cfg = model_config(name)
        cfg = miniature(cfg, hidden_size=32, depth=4 if cfg.token_routing != "none" else 2)
        if cfg.architecture == "unet":
            cfg = cfg.replace(unet_blocks=[2] * len(cfg.unet_blocks)).validate()
        if cfg not in out.values():
            out[name] = cfg
    for name, changes in VARIANTS.items():                # settings no preset has
        cfg = model_config(name.split("+")[0], [f"{k}={v}" for k, v in changes.items()])
        out[name] = miniature(cfg, hidden_size=32, depth=4 if cfg.token_routing != "none" else 2)
    return out


VARIANTS = {"pixeldit_xl+no_pixel_attention": {"pixel_attention": "false"},
            "jit_b16+tread": {"token_routing": "tread", "routing_end": 10},    # routed and in-context tokens
            "diffit_latent_xl2+windows": {"window_size": 2, "window_shift": "true"},
            "dit_xl16+tmsa_windows": {"time_conditioning": "tmsa", "window_size": 2, "rel_pos_bias": "relative"}}


MINIATURES = miniatures()
STD = 0.1                 # random weights: modulations and gates non-zero, activations of order 1


def alternatives(cfg: ModelConfig, name: str) -> list:
    """Other values of a field to try, the most telling first (invalid ones are refused by `validate`)."""
    value, meta = getattr(cfg, name), field_meta(ModelConfig)[name]
    if meta.choices:
        return [c for c in meta.choices if c != value]
    if isinstance(value, bool):
        return [not value]
    if value is None:
        return [cfg.hidden_size, 2, 4, 8, 16, 1]
    if isinstance(value, int):
        return [v for v in (value * 2, value + 1, value - 1, value // 2) if v != value]
    if isinstance(value, float):
        return [value / 2 + 0.1, value * 2, value + 0.5, 0.0]
    if isinstance(value, list):
        return [[v / 2 if isinstance(v, float) else max(1, v // 2) for v in value], [v * 2 for v in value]]
    return []


def valid_alternatives(cfg: ModelConfig, name: str):
    """The configs with another valid value of the field."""
    for value in alternatives(cfg, name):
        try:
            yield cfg.replace(**{name: value}).validate()
        except ConfigError:
            continue


def behaviour(cfg: ModelConfig, train: bool):
    """(parameter names and shapes, outputs) of the model with random weights drawn from a fixed seed, on
    a fixed input with GT pixel hints: the output, REPA features and MoE routing loss in eval mode, and with
    `train` in train mode too (dropout, token routing; a fixed seed: the same draws)."""
    torch.manual_seed(0)
    model = randomize(build_model(cfg), std=STD)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t, y = torch.rand(2, generator=g), torch.randint(0, cfg.num_classes, (2,), generator=g)
    hint_mask = torch.rand(2, 1, cfg.input_size, cfg.input_size, generator=g) < 0.5
    outputs = []
    with torch.no_grad():
        for mode in (False, True) if train else (False,):
            model.train(mode)
            torch.manual_seed(2)
            out = model(x, t, y, x, hint_mask)
            outputs += [out.prediction, out.repa, out.routing_loss]
    return shapes, outputs


def same(a, b) -> bool:
    (shapes_a, outs_a), (shapes_b, outs_b) = a, b
    return shapes_a == shapes_b and all(
        (u is None and v is None) or (u is not None and v is not None and u.shape == v.shape and torch.equal(u, v))
        for u, v in zip(outs_a, outs_b))


@pytest.mark.parametrize("preset", list(MINIATURES))
def test_every_switch_changes_the_model_exactly_when_it_is_not_declared_inert(preset):
    """Every field declared inert under this miniature, at any other valid value, leaves the parameters and
    the output as they are; every other field (but those acting outside the network) changes them."""
    cfg = MINIATURES[preset]
    references = {train: behaviour(cfg, train) for train in (False, True)}
    assert all(torch.isfinite(out).all() for out in references[True][1] if out is not None)

    def changes(other: ModelConfig) -> bool:
        train = cfg.random_in_training or other.random_in_training
        return not same(behaviour(other, train), references[train])

    inert = cfg.inert_fields()
    wrongly_inert, wrongly_active, no_alternative, tried = [], [], [], 0
    for name in field_meta(ModelConfig):
        if name in OUTSIDE_THE_NETWORK and name not in inert:
            continue
        others = valid_alternatives(cfg, name)
        if name in inert:
            for other in others:                         # every other value: none may change anything
                tried += 1
                if changes(other):
                    wrongly_inert.append(f"{name}={getattr(other, name)} ({inert[name]})")
            continue
        tried_values, changed = [], False
        for other in others:                            # until one changes the model
            tried_values.append(getattr(other, name))
            if changes(other):
                changed = True
                break
        if name in NO_OTHER_MODEL and not changed:
            continue
        if not tried_values:
            no_alternative.append(name)
        elif not changed:
            wrongly_active.append(f"{name} (tried {tried_values})")
    assert not wrongly_inert, f"{preset}: declared inert, yet changes the model: {wrongly_inert}"
    assert not wrongly_active, f"{preset}: changes nothing, yet not declared inert (inert_when=): {wrongly_active}"
    assert not no_alternative, f"{preset}: no valid other value to try: {no_alternative}"
    assert tried >= 5 or not inert


def test_a_pixel_pathway_switch_is_inert_exactly_without_the_pathway():
    """What the report leaves out of a row's config differences (`inert_fields`), on the Table-4 example."""
    pixeldit = model_config("pixeldit_xl")
    assert "adaln" in pixeldit.replace(pixel_pathway=False).inert_fields()
    assert "adaln" not in pixeldit.inert_fields()


@pytest.mark.parametrize("cls", sorted({type(node) for node in (ModelConfig(), *(
    getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig))) if dataclasses.is_dataclass(node)},
    key=lambda c: c.__name__))
def test_metadata_names_existing_fields_values_families_and_papers(cls):
    metas = field_meta(cls)                              # parses every inert_when: an unknown field is refused
    family_field = getattr(cls, "FAMILY_FIELD", None)
    for name, meta in metas.items():
        assert set(meta.cite) <= set(PAPERS), (name, set(meta.cite) - set(PAPERS))
        assert all(where.strip(": ") for where in meta.cite.values()), name
        if meta.family is not None:
            assert family_field and set(meta.family) <= set(choices_of(cls, family_field)), (name, meta.family)
        for condition in meta.inert_when:
            assert name not in {clause.name for clause in condition.clauses}, (name, condition.text)


def test_a_condition_naming_an_unknown_field_or_value_is_refused_in_one_line():
    @dataclasses.dataclass
    class Mistyped:
        pixel_pathway: bool = True
        adaln: str = choice("C", "A", inert_when="pixel_pathwya=false")

    with pytest.raises(ConfigError) as err:
        field_meta(Mistyped)
    assert str(err.value) == ("Mistyped: adaln.inert_when='pixel_pathwya=false': unknown field 'pixel_pathwya' "
                              "(did you mean pixel_pathway?)")

    @dataclasses.dataclass
    class BadValue:
        ffn: str = choice("swiglu", "gelu")
        gelu: str = switch("exact", inert_when=("ffn=gelu", "ffn=swiglue"))

    with pytest.raises(ConfigError) as err:
        field_meta(BadValue)
    assert str(err.value) == ("BadValue: gelu.inert_when='ffn=swiglue': unknown value 'swiglue' of ffn, expected one "
                              "of ['swiglu', 'gelu'] (did you mean swiglu?)")


def test_docs_switch_table_is_the_generated_one():
    """docs/models.md's table of every model switch (`python -m models.inspect --switch-table --write ...`)."""
    text = (ROOT / TABLE_FILE).read_text()
    start, end = table_span(text)
    assert text[start:end] == switch_table(), \
        f"{TABLE_FILE}'s switch table is out of date; regenerate it: {TABLE_COMMAND}"
    for name in field_meta(ModelConfig):
        assert f"| `{name}` |" in text[start:end]


def test_docs_recipe_switch_table_is_the_generated_one():
    """docs/training.md's table of the loss and optimizer groups (`python -m harness.train --switch-table --write
    ...`)."""
    from harness.train import (
        RECIPE_GROUPS,
        RECIPE_TABLE_BEGIN,
        RECIPE_TABLE_COMMAND,
        RECIPE_TABLE_END,
        RECIPE_TABLE_FILE,
        recipe_switch_table,
    )
    from toolkit.docs import marked_span
    text = (ROOT / RECIPE_TABLE_FILE).read_text()
    start, end = marked_span(text, RECIPE_TABLE_BEGIN, RECIPE_TABLE_END, RECIPE_TABLE_FILE)
    assert text[start:end] == recipe_switch_table(), \
        f"{RECIPE_TABLE_FILE}'s recipe switch table is out of date; regenerate it: {RECIPE_TABLE_COMMAND}"
    for group in RECIPE_GROUPS:
        for name in field_meta(type(getattr(TrainConfig(), group))):
            assert f"| `{group}.{name}` |" in text[start:end]
