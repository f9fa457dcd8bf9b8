"""The 2026 pixel-space switches change what they should and nothing else: the pixel decoders [DeCo, PixNerd],
token routing [TREAD, SPRINT] and ProMoE's mixture-of-experts FFN. Their match with the official codes is in
tests/test_convert.py (golden fixtures); here: off is today's model, on changes only its own part, the routing
touches fewer tokens in training, and the MoE dispatch equals a token-by-token reference."""
import pytest
import torch
import torch.nn.functional as F
from conftest import inputs, randomize

from models.complexity import count_flops
from models.families import build_model, miniature
from models.layers import patchify
from models.moe import ExpertBank, routing_contrastive_loss
from models.presets import PRESETS, model_config
from toolkit.errors import ConfigError

NEW = ("decoder.", "routing.", "ffn.experts", "ffn.prototypes", "ffn.shared")


def tiny(preset: str, *overrides: str, depth: int = 4):
    return miniature(model_config(preset, list(overrides)), hidden_size=32, depth=depth)


def seeded(cfg, std=0.1):
    torch.manual_seed(0)
    return randomize(build_model(cfg), std=std)


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.startswith(("deco", "pixnerd", "promoe", "tread",
                                                                            "sprint"))])
def test_every_earlier_preset_has_the_switches_off(preset):
    """The new fields' defaults are today's model: no decoder, route or expert module, no routing loss (with the
    golden fixtures of tests/test_convert.py and the sweep signatures of tests/test_signatures.py unchanged)."""
    cfg = model_config(preset)
    assert (cfg.decoder, cfg.token_routing, cfg.moe_experts) == ("linear", "none", 0)
    if cfg.architecture == "transformer":            # the U-Net's own `decoder` is its upsampling half
        model = build_model(miniature(cfg), device="meta")
        assert not [k for k in model.state_dict() if any(n in k for n in NEW)]


# ---- pixel decoders -------------------------------------------------------------------------------------

@pytest.mark.parametrize("decoder", ["deco", "nerf"])
def test_a_pixel_decoder_replaces_only_the_final_layer(decoder):
    """Same patch blocks, same tokens: only how they become pixels changes; the decoder starts at zero output
    (its output layer zero-initialised, as both codes do) and reads the noisy pixels themselves."""
    linear = tiny("pixeldit_xl", "pixel_pathway=false", "repa=false")
    other = linear.replace(decoder=decoder).validate()
    a, b = seeded(linear), build_model(other)
    shared = {k: v for k, v in a.state_dict().items() if not k.startswith("final_layer")}
    assert b.load_state_dict(shared, strict=False).unexpected_keys == []
    x, t, y = inputs(linear)
    with torch.no_grad():
        patches = patchify(x, linear.patch_size)
        assert torch.equal(a.patch_pathway(patches, t, y)[0], b.patch_pathway(patches, t, y)[0])
        assert torch.count_nonzero(b(x, t, y).prediction) == 0
        randomize(b.decoder, std=0.1)
        tokens_fixed = b(x, t, y).prediction
        assert not torch.equal(tokens_fixed, a(x, t, y).prediction)
        x2 = x.clone()
        x2[..., :8, :8] += 1.0                      # one patch's pixels: the decoder of that patch sees them
        changed = (b(x2, t, y).prediction - tokens_fixed).abs().amax(dim=(0, 1))
        assert changed[:8, :8].max() > 0


def test_the_dct_basis_is_the_codes_one():
    """Pixel (row r, column c) of a p x p patch, frequency pair (fx, fy): cos(pi c' fx) cos(pi r' fy) / (1 + fx fy)
    with c' = c / (p - 1), r' = r / (p - 1) and f on linspace(0, 8, 8) [both codes' NerfEmbedder]."""
    from models.decoders import dct_basis
    p, basis, f = 4, dct_basis(4), torch.linspace(0, 8, 8)
    r, c, i, j = 2, 1, 3, 5
    expected = torch.cos(torch.pi * c / (p - 1) * f[i]) * torch.cos(torch.pi * r / (p - 1) * f[j]) / (1 + f[i] * f[j])
    assert basis.shape == (p * p, 64) and torch.allclose(basis[r * p + c, i * 8 + j], expected)


# ---- token routing ------------------------------------------------------------------------------------

def block_token_counts(model, cfg, train: bool) -> list[int]:
    counts = []
    hooks = [block.register_forward_pre_hook(lambda m, args: counts.append(args[0].shape[1])) for block in model.blocks]
    model.train(train)
    with torch.no_grad():
        model(*inputs(cfg))
    for hook in hooks:
        hook.remove()
    return counts


def test_tread_is_the_unrouted_model_at_inference_and_routes_half_the_tokens_in_training():
    routed = tiny("dit_xl16", "token_routing=tread", "routing_start=1", "routing_end=2", "repa=false")
    plain = routed.replace(token_routing="none")
    a, b = seeded(routed), seeded(plain)
    assert a.state_dict().keys() == b.state_dict().keys()                 # TREAD adds no parameter
    x, t, y = inputs(routed)
    with torch.no_grad():
        assert torch.equal(a.eval()(x, t, y).prediction, b.eval()(x, t, y).prediction)
        torch.manual_seed(1)
        assert not torch.equal(a.train()(x, t, y).prediction, b.train()(x, t, y).prediction)
    assert block_token_counts(a, routed, train=True) == [16, 8, 8, 16]     # 16 tokens, blocks 1..2 see half
    assert block_token_counts(a, routed, train=False) == [16] * 4
    assert count_flops(routed, training=True) < count_flops(routed) == count_flops(plain)


def test_routed_tokens_skip_the_route_unchanged():
    """With the route's blocks made to add 1 to every token they see, a routed token comes out of the route
    exactly as it went in, and a visible one one per block later (PRX: routed tokens are restored as stashed)."""
    cfg = tiny("dit_xl16", "token_routing=tread", "routing_start=1", "routing_end=2", "repa=false",
               "routing_fraction=0.25")
    model = seeded(cfg)
    seen = {}
    for i in (1, 2):
        model.blocks[i].forward = lambda x, c, rope=None: x + 1
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.update({"in": out}))
    model.blocks[3].register_forward_pre_hook(lambda m, args: seen.update({"out": args[0]}))
    model.train()
    with torch.no_grad():
        model(*inputs(cfg))
    moved = (seen["out"] - seen["in"]).mean(dim=-1)                      # (B, N): 0 routed, 2 visible
    assert set(torch.unique(moved).tolist()) == {0.0, 2.0}
    assert ((moved == 0).sum(dim=1) == 4).all()                           # round(16 * 0.25) per sample


def test_sprint_fuses_at_inference_and_drops_three_quarters_in_training():
    cfg = tiny("dit_xl16", "token_routing=sprint", "routing_fraction=0.75", "routing_start=1", "routing_end=2",
               "repa=false")
    model = seeded(cfg)
    assert {k for k in model.state_dict() if k.startswith("routing.")} == {
        "routing.fuse.weight", "routing.fuse.bias", "routing.mask_token"}
    assert block_token_counts(model, cfg, train=True) == [16, 4, 4, 16]
    assert block_token_counts(model, cfg, train=False) == [16] * 4


def test_routing_keeps_in_context_tokens_and_their_rope():
    """JiT's class tokens join inside the route (block 1) and are never routed."""
    cfg = tiny("jit_b16", "token_routing=tread", "routing_start=0", "routing_end=2", "in_context_start=1",
               "routing_fraction=0.5")
    model = seeded(cfg)
    assert block_token_counts(model, cfg, train=True) == [8, 12, 12, 20]   # 16 grid tokens, 4 class tokens
    plain, x = seeded(cfg.replace(token_routing="none")), inputs(cfg)
    with torch.no_grad():
        assert torch.equal(model.eval()(*x).prediction, plain.eval()(*x).prediction)


@pytest.mark.parametrize("preset, overrides, key", [
    ("dit_xl16", ["token_routing=tread", "routing_end=28"], "model.routing_end"),
    ("pixeldit_xl", ["token_routing=tread"], "model.repa_block"),        # REPA's block 8 inside the route 2..12
    ("diffit_latent_xl2", ["token_routing=tread"], "model.token_routing"),
    ("dit_xl16", ["token_routing=sprint", "routing_fraction=1.0"], "model.routing_fraction"),
    ("dit_xl16", ["moe_experts=4"], "model.ffn"),                        # DiT's GELU MLP: no SwiGLU experts
])
def test_invalid_combinations_are_refused_naming_the_field(preset, overrides, key):
    with pytest.raises(ConfigError) as err:
        model_config(preset, overrides)
    assert err.value.key == key and "\n" not in str(err.value)


# ---- ProMoE's mixture of experts --------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [32, 21])       # 32: one grouped matmul; 21 (84-byte rows): one matmul per expert
def test_the_expert_dispatch_equals_each_token_through_its_own_expert(hidden):
    torch.manual_seed(0)
    bank = ExpertBank(4, 16, hidden, bias=True, dropout=0.0)
    with torch.no_grad():
        bank.b12.normal_()
        bank.b3.normal_()
    x, expert = torch.randn(37, 16, requires_grad=True), torch.tensor([3, 0, 0, 2] * 9 + [3])   # expert 1: none
    out = bank(x, expert)
    rows = []
    for token, e in zip(x, expert.tolist()):
        gate, value = (bank.w12[e] @ token + bank.b12[e]).chunk(2)
        rows.append(bank.w3[e] @ (F.silu(gate) * value) + bank.b3[e])
    reference = torch.stack(rows)
    assert torch.allclose(out, reference, atol=1e-5)
    out.sum().backward()
    assert bank.w12.grad[1].abs().sum() == 0 and bank.w12.grad[[0, 2, 3]].abs().sum() > 0


def test_the_null_label_has_its_own_expert():
    """Tokens of a CFG-null sample go through the unconditional expert (weight 1), the others through their
    prototype's expert: changing the unconditional expert changes only the null sample's output."""
    cfg = tiny("promoe_xl", "moe_experts=3")
    model = seeded(cfg).eval()
    x, t = inputs(cfg)[:2]
    y = torch.tensor([4, cfg.num_classes])
    with torch.no_grad():
        before = model(x, t, y).prediction
        model.blocks[1].ffn.experts.w3[-1].add_(0.5)                     # the unconditional expert
        after = model(x, t, y).prediction
    assert torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])


def rcl_reference(prototypes, tokens, expert, conditional, temperature):
    """ProMoE's routing contrastive loss as its code computes it, expert by expert."""
    tokens, expert = tokens[conditional], expert[conditional]
    active = torch.unique(expert, sorted=True)
    if active.numel() < 2:
        return torch.tensor(0.0)
    centroids = torch.stack([tokens[expert == e].mean(dim=0) for e in active])
    logits = F.normalize(prototypes[active], dim=-1) @ F.normalize(centroids, dim=-1).T
    return F.cross_entropy(logits / temperature, torch.arange(active.numel()))


@pytest.mark.parametrize("experts_used, null", [([0, 1, 2, 3], 0), ([2, 3], 5), ([1], 0), ([0, 2], 40)])
def test_the_routing_loss_is_the_codes_one(experts_used, null):
    torch.manual_seed(0)
    prototypes, tokens = torch.randn(5, 8), torch.randn(40, 8)
    expert = torch.tensor(experts_used).repeat(40)[:40]
    conditional = torch.arange(40) >= null
    ours = routing_contrastive_loss(prototypes, tokens, expert, conditional, 0.07)
    assert torch.allclose(ours, rcl_reference(prototypes, tokens, expert, conditional, 0.07), atol=1e-5)


def test_moe_blocks_are_the_odd_ones_and_cost_one_expert_per_token():
    """FLOPs (`python -m models.inspect`): an MoE FFN costs the shared and one routed expert per token, the
    cosines to the prototypes and the loss's E x E logits, in place of the dense FFN."""
    cfg = tiny("promoe_xl", depth=4)
    model = build_model(cfg, device="meta")
    assert [type(b).__name__ for b in model.blocks] == ["PatchBlock", "MoEPatchBlock"] * 2
    N, D, E = cfg.num_patches, cfg.hidden_size, cfg.moe_experts
    expert, dense = int(2 * cfg.moe_hidden / 3), cfg.ffn_hidden
    per_block = 2 * 6 * N * D * expert + 2 * N * D * E + 2 * E * E * D - 6 * N * D * dense
    assert count_flops(cfg) - count_flops(cfg.replace(moe_experts=0)) == len(cfg.moe_blocks()) * per_block
