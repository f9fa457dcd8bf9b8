"""What each switch does, on tiny configs: modulation structure, paths of t, compaction, init, REPA, hints."""
import math

import pytest
import torch
from conftest import inputs, randomize, tiny

from models.complexity import component_params
from models.config import ModelConfig
from models.diffit import DiffiTUNet
from models.families import FAMILIES, build_model, family, miniature
from models.layers import apply_rope, patchify, rope_2d, sincos_2d, unpatchify
from models.presets import model_config
from models.transformer import DiffusionTransformer, PixelBlock
from toolkit.errors import ConfigError
from toolkit.fields import choices_of


def modulation(variant: str) -> torch.Tensor:
    """Per-pixel modulation of one PiT block, broadcast to (B, L, p*p, 6, D_pix)."""
    cfg = tiny(adaln=variant)
    block = randomize(PixelBlock(cfg))
    s_cond = torch.randn(2, cfg.num_patches, cfg.hidden_size)
    return block.modulation(s_cond).expand(2, cfg.num_patches, cfg.patch_size ** 2, 6, cfg.pixel_dim)


def test_variant_a_same_modulation_for_every_pixel_of_an_image():
    mod = modulation("A")
    assert torch.equal(mod, mod[:, :1, :1].expand_as(mod))
    assert not torch.allclose(mod[0], mod[1])                 # but it does depend on the image


def test_variant_b_same_within_a_patch_different_across_patches():
    mod = modulation("B")
    assert torch.equal(mod, mod[:, :, :1].expand_as(mod))
    assert not torch.allclose(mod[:, 0], mod[:, 1])


def test_variant_c_different_within_a_patch():
    mod = modulation("C")
    assert not torch.allclose(mod[:, :, 0], mod[:, :, 1])
    assert not torch.allclose(mod[:, 0], mod[:, 1])


def test_variant_changes_only_the_modulation_projection():
    base = model_config("pixeldit_xl")
    counts = {v: component_params(DiffusionTransformer(tiny(adaln=v)))
              for v in "ABC"}
    p2 = tiny().patch_size ** 2
    mod = "pixel_blocks.modulation"
    for v in "AB":
        assert {k: n for k, n in counts[v].items() if k != mod} == {k: n for k, n in counts["C"].items() if k != mod}
    assert counts["A"][mod] == counts["B"][mod]
    weight_b = counts["B"][mod] - 6 * tiny().pixel_dim                     # minus the bias
    assert counts["C"][mod] - 6 * p2 * tiny().pixel_dim == p2 * weight_b  # p^2 times the weights
    assert model_config("pixeldit_xl", ["adaln=B"]) == base.replace(adaln="B")


@pytest.mark.parametrize("timestep_in_s_cond", [True, False])
def test_s_cond_timestep_is_the_only_path_from_t_into_the_pixel_blocks(timestep_in_s_cond):
    cfg = tiny(s_cond_timestep=timestep_in_s_cond)
    model = randomize(DiffusionTransformer(cfg)).eval()
    x, _, _ = inputs(cfg, batch=1)
    patches = patchify(x, cfg.patch_size)
    semantic = torch.randn(1, cfg.num_patches, cfg.hidden_size)          # s_N held fixed
    outs = [model.pixel_pathway(patches, semantic, model.t_embedder(torch.tensor([t]))) for t in (0.1, 0.9)]
    assert torch.allclose(outs[0], outs[1]) != timestep_in_s_cond


@pytest.mark.parametrize("rate", [1, 2, 4, 8, 16])
def test_compaction_rate_sets_the_attention_sequence_length(rate):
    cfg = tiny(compaction=rate)
    model = DiffusionTransformer(cfg)
    seen = []
    model.pixel_blocks[0].attn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    model(*inputs(cfg))
    assert seen == [torch.Size([2, cfg.input_size ** 2 // rate, cfg.hidden_size])]


@pytest.mark.parametrize("rate", [1, 2, 8, 16])
def test_compaction_groups_neighbouring_pixels_and_inverts_exactly(rate):
    cfg = tiny(compaction=rate, pixel_attn_dim=rate * 8)
    compaction = PixelBlock(cfg).compaction
    with torch.no_grad():                                  # identity compress/expand: pure re-layout
        for linear in (compaction.compress, compaction.expand):
            linear.weight.copy_(torch.eye(rate * 8))
            linear.bias.zero_()
    image = torch.arange(cfg.input_size ** 2, dtype=torch.float32).view(1, 1, cfg.input_size, cfg.input_size)
    pixels = patchify(image.expand(1, 8, -1, -1), cfg.patch_size)        # (1, L, p*p, 8), value = raster index
    tokens = compaction.compact(pixels)
    assert torch.equal(compaction.uncompact(tokens), pixels)
    rows, cols = tokens[0, :, ::8] // cfg.input_size, tokens[0, :, ::8] % cfg.input_size
    assert int((rows.amax(1) - rows.amin(1) + 1).mul(cols.amax(1) - cols.amin(1) + 1).max()) == rate  # a sub-patch


def test_zero_initialised_gates_make_every_block_an_identity():
    cfg = tiny()
    model = DiffusionTransformer(cfg)
    x = torch.randn(2, cfg.num_patches, cfg.hidden_size)
    c = torch.randn(2, cfg.hidden_size)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    pixels = torch.randn(2, cfg.num_patches, cfg.patch_size ** 2, cfg.pixel_dim)
    for block in model.pixel_blocks:
        assert torch.equal(block(pixels, x), pixels)
    assert torch.count_nonzero(model(*inputs(cfg)).prediction) == 0      # zero output layer


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("in_context", [0, 3])
def test_repa_features_come_from_block_k(k, in_context):
    cfg = tiny(depth=3, repa=True, repa_block=k, in_context_tokens=in_context, in_context_start=1)
    model = randomize(DiffusionTransformer(cfg))
    captured = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
    repa = model(*inputs(cfg)).repa
    after_k = captured[k - 1]
    after_k = after_k[:, after_k.shape[1] - cfg.num_patches:]           # in-context tokens are not aligned
    assert repa.shape == (2, cfg.num_patches, cfg.repa_dim)
    assert torch.allclose(repa, model.repa_projector(after_k))
    others = [i for i in range(3) if i != k - 1]
    for i in others:
        other = captured[i][:, captured[i].shape[1] - cfg.num_patches:]
        assert not torch.allclose(repa, model.repa_projector(other))


def test_hints_change_the_output_only_where_revealed():
    cfg = tiny(hint_fraction=0.25, hint_path="output")
    model = randomize(DiffusionTransformer(cfg))
    x, t, y = inputs(cfg)
    mask = (torch.rand(2, 1, cfg.input_size, cfg.input_size) < 0.25).float()
    plain = model(x, t, y).prediction
    hinted = model(x, t, y, hint=x, hint_mask=mask).prediction
    changed = (hinted - plain).abs().amax(dim=1, keepdim=True) > 0
    assert torch.equal(changed, mask.bool())


def test_hints_through_the_blocks_path_reach_the_pixel_blocks_and_start_silent():
    cfg = tiny(hint_fraction=0.25, hint_path="blocks")
    x, t, y = inputs(cfg)
    mask = torch.ones(2, 1, cfg.input_size, cfg.input_size)
    model = DiffusionTransformer(cfg)
    model.pixel_out.linear.weight.data.normal_()                       # see past the zero output layer
    assert torch.equal(model(x, t, y).prediction, model(x, t, y, hint=x, hint_mask=mask).prediction)
    randomize(model)
    assert not torch.allclose(model(x, t, y).prediction, model(x, t, y, hint=x, hint_mask=mask).prediction)


def test_learned_sigma_doubles_the_output_channels():
    cfg = tiny(pixel_pathway=False, learn_sigma=True)
    assert DiffusionTransformer(cfg)(*inputs(cfg)).prediction.shape == (2, 6, 16, 16)


@pytest.mark.parametrize("pixel_pathway", [True, False])
def test_in_context_tokens_are_removed_before_the_output(pixel_pathway):
    cfg = tiny(pixel_pathway=pixel_pathway, in_context_tokens=5, in_context_start=1, pos_embed="both")
    model = randomize(DiffusionTransformer(cfg))
    out = model(*inputs(cfg)).prediction
    assert out.shape == (2, 3, 16, 16)


def test_dropout_only_inside_the_band():
    cfg = tiny(depth=8, dropout=0.2, pixel_pathway=False)
    model = DiffusionTransformer(cfg)
    rates = [(block.attn.proj_drop.p, block.ffn.drop.p) for block in model.blocks]
    assert rates == [(0.0, 0.0)] * 2 + [(0.2, 0.2)] * 4 + [(0.0, 0.0)] * 2


def test_dropout_where_jit_drops_after_the_projection_and_on_the_swiglu_hidden():
    """JiT's code: no dropout on the attention probabilities; on the attention output after its projection,
    and on the SwiGLU hidden before w3. Seen as exact zeros where each dropout acts."""
    cfg = tiny(depth=1, dropout=0.5, dropout_band=[0.0, 1.0], pixel_pathway=False)
    block = randomize(DiffusionTransformer(cfg)).train().blocks[0]
    seen = {}
    block.attn.proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("attention", args[0]))
    block.attn.register_forward_hook(lambda m, args, out: seen.__setitem__("projected", out))
    block.ffn.w3.register_forward_pre_hook(lambda m, args: seen.__setitem__("hidden", args[0]))
    block(torch.randn(2, cfg.num_patches, cfg.hidden_size), torch.randn(2, cfg.hidden_size))
    zeros = {name: float((value == 0).float().mean()) for name, value in seen.items()}
    assert zeros["attention"] == 0.0                          # softmax(qk) v: no probability was dropped to 0
    assert 0.4 < zeros["projected"] < 0.6 and 0.4 < zeros["hidden"] < 0.6


def test_pixel_attention_off_removes_compaction_and_attention():
    cfg = tiny(pixel_attention=False)
    model = DiffusionTransformer(cfg)
    names = component_params(model)
    assert "pixel_blocks.attn" not in names and "pixel_blocks.compaction" not in names
    assert model(*inputs(cfg)).prediction.shape == (2, 3, 16, 16)


def test_post_modulation_has_four_way_modulation_and_no_gates():
    cfg = tiny(pixel_modulation="post", adaln="B")
    block = PixelBlock(cfg)
    assert block.modulation.proj.out_features == 4 * cfg.pixel_dim


@pytest.mark.parametrize("placement, last", [("index", 5.0), ("span16", 16.0)])
def test_rope_positions_index_or_the_grid_squeezed_into_0_16(placement, last):
    """JiT rotates by the integer index; PixelDiT's code by linspace(0, 16, g), so the last row sits at 16
    whatever the grid (channel 0: the row at frequency 1)."""
    cos, _ = rope_2d(16, 6, 6, 10000.0, placement=placement)
    assert cos[-1, 0] == pytest.approx(math.cos(last), abs=1e-6)
    assert cos[5, 0] == pytest.approx(1.0)                  # row 0, last column: no row rotation


def test_sincos_table_is_column_first():
    """The MAE layout of DiT, JiT, PixelDiT and DiffiT: the first half of the channels encodes the column."""
    table = sincos_2d(8, 2, 3)                              # tokens in raster order: (row, col)
    assert table[1, 0] == pytest.approx(math.sin(1.0))      # (0, 1): the column is 1
    assert table[3, 0] == pytest.approx(0.0)                # (1, 0): the column is 0
    assert table[3, 4] == pytest.approx(math.sin(1.0))      # ... and the row, in the second half, is 1


@pytest.mark.parametrize("preset, normed", [("pixeldit_xl", True), ("jit_b16", True), ("dit_xl2", False),
                                            ("diffit_latent_xl2", False)])
def test_norm_weights_where_the_official_code_has_them(preset, normed):
    names = [n for n, _ in build_model(miniature(model_config(preset)), device="meta").named_parameters()]
    block_norms = [n for n in names if ".norm" in n and "_norm" not in n]
    assert bool(block_norms) == normed


def test_the_family_registry_names_every_architecture():
    assert set(FAMILIES) == set(choices_of(ModelConfig, "architecture"))
    for preset, cls in [("pixeldit_xl", DiffusionTransformer), ("diffit_cifar10", DiffiTUNet)]:
        cfg = model_config(preset)
        assert type(build_model(miniature(cfg))) is cls is family(cfg).model_class()


def test_rope_scores_depend_only_on_relative_offsets():
    cos, sin = rope_2d(16, 6, 6, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(a, b):
        ia, ib = a[0] * 6 + a[1], b[0] * 6 + b[1]
        qa = apply_rope(q.view(1, 1, 1, 16), cos[ia:ia + 1], sin[ia:ia + 1])
        kb = apply_rope(k.view(1, 1, 1, 16), cos[ib:ib + 1], sin[ib:ib + 1])
        return float((qa * kb).sum())

    assert score((0, 0), (2, 3)) == pytest.approx(score((3, 2), (5, 5)), abs=1e-5)
    assert score((0, 0), (2, 3)) != pytest.approx(score((0, 0), (3, 2)), abs=1e-3)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 4), x)


@pytest.mark.parametrize("change, field", [
    (dict(compaction=3), "model.compaction"),
    (dict(repa=True, repa_block=5), "model.repa_block"),
    (dict(input_size=18), "model.input_size"),
    (dict(adaln="D"), "model.adaln"),
    (dict(num_heads=3), "model.num_heads"),
    (dict(in_context_tokens=4, in_context_start=2), "model.in_context_start"),
    (dict(hint_fraction=0.2, pixel_pathway=False), "model.hint_fraction"),
    (dict(ffn="relu"), "model.ffn"),
    (dict(gelu="fast"), "model.gelu"),
    (dict(rope_positions="linspace"), "model.rope_positions"),
])
def test_invalid_combinations_are_refused_naming_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        tiny(**change)
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message


@pytest.mark.parametrize("override, field", [
    ("adaln=Z", "model.adaln"), ("depth=abc", "model.depth"), ("nonsense=1", "model.nonsense"),
    ("compaction=7", "model.compaction"),
])
def test_bad_overrides_are_refused_naming_the_key(override, field):
    with pytest.raises(ConfigError, match=field):
        model_config("pixeldit_xl", [override])
