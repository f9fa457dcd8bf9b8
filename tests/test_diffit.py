"""DiffiT in the zoo: TMSA, relative position bias, (shifted) windows, the U-Net, presets and switches."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

from models.diffit import TMSA, DiffiTUNet, relative_position_index, window_merge, window_partition
from models.layers import Attention
from models.presets import miniature, model_config
from models.transformer import build_model
from toolkit.errors import ConfigError

DIM, HEADS, TIME = 16, 2, 12


def tmsa(size=8, window=None, shift=0, time="qkv", rel_bias=True) -> TMSA:
    module = TMSA(DIM, HEADS, TIME, size, window or size, shift, time, rel_bias, qkv_bias=True, qk_norm=False)
    return randomize(module, 0.2).eval()


def tokens(size=8, batch=2):
    return torch.randn(batch, size, size, DIM), torch.randn(batch, TIME)


def test_tmsa_with_time_off_is_plain_self_attention():
    """tmsa_time=none: the same q/k/v/out projections as a plain attention layer, the same output, and t
    has no effect; with the time part on, zeroing W_t gives back exactly the plain layer [DiffiT eq. 3-5]."""
    x, time = tokens()
    off = tmsa(time="none", rel_bias=False)
    plain = Attention(DIM, HEADS, qkv_bias=True, qk_norm=False).eval()
    plain.load_state_dict({k: v for k, v in off.state_dict().items()})
    expected = plain(x.view(2, 64, DIM)).view(2, 8, 8, DIM)
    torch.testing.assert_close(off(x, time), expected)
    torch.testing.assert_close(off(x, torch.randn(2, TIME)), expected)

    on = tmsa(time="qkv", rel_bias=False)
    assert set(on.state_dict()) - set(off.state_dict()) == {"qkv_time.weight", "qkv_time.bias"}
    assert not torch.allclose(on(x, time), on(x, torch.randn(2, TIME)))
    with torch.no_grad():
        on.qkv_time.weight.zero_()
        on.qkv_time.bias.zero_()
    plain.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("qkv_time")})
    torch.testing.assert_close(on(x, time), plain(x.view(2, 64, DIM)).view(2, 8, 8, DIM))


def test_tmsa_time_enters_q_k_and_v_linearly():
    """q_s = x_s W_qs + x_t W_qt (and k, v): the TMSA output equals attention computed by hand from the
    concatenated-token form the paper notes is equivalent [DiffiT 3.2]."""
    x, time = tokens(size=4)
    module = tmsa(size=4, rel_bias=False)
    joint = torch.cat([x, time[:, None, None].expand(-1, 4, 4, -1)], dim=-1)          # [x_s | x_t]
    weight = torch.cat([module.qkv.weight, module.qkv_time.weight], dim=1)
    bias = module.qkv.bias + module.qkv_time.bias
    q, k, v = (joint @ weight.T + bias).view(2, 16, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1) @ v
    expected = module.proj(attn.transpose(1, 2).reshape(2, 4, 4, DIM))
    torch.testing.assert_close(module(x, time), expected)


def test_relative_position_bias_matches_a_direct_computation():
    """B[i, j] = table[offset(i, j)] per head, the offset being (row_i - row_j, col_i - col_j) [DiffiT eq. 6]."""
    w = 3
    index = relative_position_index(w)
    coords = [(r, c) for r in range(w) for c in range(w)]
    offsets = {}
    for i, (ri, ci) in enumerate(coords):
        for j, (rj, cj) in enumerate(coords):
            offsets.setdefault((ri - rj, ci - cj), set()).add(int(index[i, j]))
    # one entry per offset, laid out as the official code's (Swin's) table: row offset major
    assert offsets == {(dr, dc): {(dr + w - 1) * (2 * w - 1) + dc + w - 1} for dr, dc in offsets}
    assert len(offsets) == (2 * w - 1) ** 2

    x, time = tokens(size=w)
    module = tmsa(size=w, time="none")
    q, k, v = module.qkv(x).view(2, w * w, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
    bias = torch.stack([torch.stack([module.rel_bias[int(index[i, j])] for j in range(w * w)])
                        for i in range(w * w)]).permute(2, 0, 1)               # (heads, N, N)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS) + bias, dim=-1) @ v
    torch.testing.assert_close(module(x, time), module.proj(attn.transpose(1, 2).reshape(2, w, w, DIM)))


def test_full_size_window_equals_full_attention():
    """A window covering the map is full attention: the same parameters, the same output, whether the
    window is the map's size, larger (clipped to the map) or unset."""
    cfg = miniature(model_config("diffit_latent_xl2"))                  # 4x4 patch grid
    outputs = []
    for window in (None, 4, 16):
        torch.manual_seed(0)
        model = randomize(build_model(cfg.replace(window_size=window))).eval()
        torch.manual_seed(1)
        x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
        outputs.append(model(x, torch.rand(2), torch.tensor([1, 2])).prediction)
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])


def test_window_attention_is_full_attention_inside_each_window():
    """Windowed TMSA equals running the same TMSA as full attention on every w x w crop separately."""
    x, time = tokens(size=8)
    windowed = tmsa(size=8, window=4)
    full = TMSA(DIM, HEADS, TIME, 4, 4, 0, "qkv", True, qkv_bias=True, qk_norm=False).eval()
    full.load_state_dict(windowed.state_dict())
    out = windowed(x, time)
    for r in (0, 4):
        for c in (0, 4):
            torch.testing.assert_close(out[:, r:r + 4, c:c + 4], full(x[:, r:r + 4, c:c + 4], time))


def _influence(module: TMSA, size: int, source: tuple[int, int]) -> torch.Tensor:
    """(size, size) bool: which output tokens change when the token at `source` is perturbed."""
    x, time = tokens(size=size, batch=1)
    moved = x.clone()
    moved[0, source[0], source[1]] += 5.0
    return (module(moved, time) - module(x, time)).abs().amax(-1)[0] > 1e-5


def test_windows_and_shifted_windows_bound_what_a_token_sees():
    """Unshifted: a token reaches exactly its own 4x4 window. Shifted by 2 (Swin): it reaches its shifted
    window; across the border of the map the rolled-in tokens stay masked from each other [Swin 3.2]."""
    plain = tmsa(size=8, window=4)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 4:8] = True
    assert torch.equal(_influence(plain, 8, (1, 5)), expected)

    shifted = tmsa(size=8, window=4, shift=2)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True                                        # the shifted window around (3, 3)
    assert torch.equal(_influence(shifted, 8, (3, 3)), expected)
    # (0, 0) and (7, 7) share a window after the roll, but were not neighbours: they stay apart
    corner = _influence(shifted, 8, (7, 7))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[6:8, 6:8] = True
    assert torch.equal(corner, expected)


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2, 6, 16, 5)
    torch.testing.assert_close(windows[:, 1].view(2, 4, 4, 5), x[:, 0:4, 4:8])
    torch.testing.assert_close(window_merge(windows, 4, 8, 12), x)


# ---- the U-Net --------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,levels", [("diffit_cifar10", 3), ("diffit_ffhq64", 4)])
def test_unet_output_shape_and_levels(preset, levels):
    cfg = model_config(preset)
    model = build_model(cfg, device="meta")
    assert isinstance(model, DiffiTUNet)
    assert len(model.encoder) == levels and len(model.decoder) == levels - 1
    assert [len(level.blocks) for level in model.encoder] == cfg.unet_blocks
    small = miniature(cfg)
    model = randomize(build_model(small)).eval()
    x = torch.randn(3, 3, small.input_size, small.input_size)
    out = model(x, torch.rand(3), torch.tensor([0, 1, small.num_classes]))
    assert out.prediction.shape == x.shape and out.repa is None


def test_unet_full_size_cifar_forward_on_cpu():
    cfg = model_config("diffit_cifar10")
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.rand(1), torch.tensor([3]))
    assert out.prediction.shape == (1, 3, 32, 32)
    assert torch.count_nonzero(out.prediction) == 0          # zero-initialised head


def test_unet_skip_wiring():
    """Each decoder level receives [up-sampled deeper features | the encoder output of its resolution],
    and the encoder levels run at input_size / 2^i with the configured widths."""
    cfg = miniature(model_config("diffit_ffhq64"))
    model = randomize(build_model(cfg)).eval()
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (args[0].detach().clone(), output.detach().clone())
        return hook

    for i, level in enumerate(model.encoder):
        level.register_forward_hook(keep(f"enc{i}"))
    for i, level in enumerate(model.decoder):
        level.register_forward_hook(keep(f"dec{i}"))
    for i, up in enumerate(model.upsample):
        up.register_forward_hook(keep(f"up{i}"))
    x = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    model(x, torch.rand(2), torch.tensor([1, 2]))
    for i, (channels, size) in enumerate(zip(cfg.unet_channels, cfg.unet_sizes)):
        assert seen[f"enc{i}"][1].shape == (2, channels, size, size)
    for i in range(len(model.decoder)):
        dec_in, dec_out = seen[f"dec{i}"]
        torch.testing.assert_close(dec_in, torch.cat([seen[f"up{i}"][1], seen[f"enc{i}"][1]], dim=1))
        assert dec_out.shape == seen[f"enc{i}"][1].shape
    deepest = len(model.encoder) - 1
    torch.testing.assert_close(seen[f"up{deepest - 1}"][0], seen[f"enc{deepest}"][1])


def test_unet_time_and_label_enter_only_through_the_blocks():
    """The ResBlocks take no time input of their own [DiffiT eq. 9]: with tmsa_time=none the U-Net is blind
    to t and y; with TMSA both change the output (the label embedding is added to the time token)."""
    base = miniature(model_config("diffit_cifar10"))
    x = torch.randn(2, 3, base.input_size, base.input_size)
    t, y = torch.rand(2), torch.tensor([1, 2])
    blind = randomize(build_model(base.replace(tmsa_time="none"))).eval()
    torch.testing.assert_close(blind(x, t, y).prediction, blind(x, torch.rand(2), torch.tensor([5, 6])).prediction)
    model = randomize(build_model(base)).eval()
    out = model(x, t, y).prediction
    assert not torch.allclose(out, model(x, torch.rand(2), y).prediction)
    assert not torch.allclose(out, model(x, t, torch.tensor([5, 6])).prediction)


@pytest.mark.parametrize("time,extra", [("none", set()), ("qkv", {"qkv_time"}), ("rel_bias", {"rel_bias_time"}),
                                        ("mlp", {"mlp_time"})])
def test_tmsa_time_switch_changes_only_its_own_parameters(time, extra):
    """DiffiT Table 6 as one override: each variant adds exactly its own time projection, and the
    time token changes the output whenever it is used."""
    base = miniature(model_config("diffit_cifar10"))
    names = {name.split(".")[-2] for name, _ in build_model(base.replace(tmsa_time=time)).named_parameters()}
    reference = {name.split(".")[-2] for name, _ in build_model(base.replace(tmsa_time="none")).named_parameters()}
    assert names - reference == extra and reference <= names
    model = randomize(build_model(base.replace(tmsa_time=time))).eval()
    x, y = torch.randn(1, 3, base.input_size, base.input_size), torch.tensor([1])
    early, late = model(x, torch.tensor([0.1]), y).prediction, model(x, torch.tensor([0.9]), y).prediction
    changed = not torch.allclose(early, late)
    assert changed == (time != "none")


def test_latent_diffit_has_no_adaln_and_takes_time_through_tmsa():
    cfg = model_config("diffit_latent_xl2")
    counts = build_model(cfg, device="meta")
    names = [name for name, _ in counts.named_parameters()]
    assert not any("adaLN" in name for name in names)
    assert sum("qkv_time" in name for name in names) == 2 * cfg.depth
    assert counts.blocks[0].block.attn.window == cfg.grid_size == 16          # the whole grid
    small_cfg = miniature(cfg)
    small = randomize(build_model(small_cfg)).eval()
    x, y = torch.randn(1, 4, small_cfg.input_size, small_cfg.input_size), torch.tensor([1])
    early, late = small(x, torch.tensor([10.0]), y).prediction, small(x, torch.tensor([900.0]), y).prediction
    assert not torch.allclose(early, late)


def test_tmsa_replaces_adaln_in_other_flat_models():
    """DiffiT 5.9 (TMSA vs DiT modulation) as an override of any flat model, PixelDiT's RoPE included."""
    cfg = miniature(model_config("pixeldit_xl", ["time_conditioning=tmsa", "rel_pos_bias=relative",
                                                 "window_size=2", "window_shift=true"]))
    model = randomize(build_model(cfg)).eval()
    assert not any("blocks.0.adaLN" in name for name, _ in model.named_parameters())
    x = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    assert model(x, torch.rand(2), torch.tensor([1, 2])).prediction.shape == x.shape


def test_diffit_blocks_compile_without_graph_breaks():
    cfg = miniature(model_config("diffit_cifar10", ["window_shift=true"]))
    model = build_model(cfg).eval()
    x = torch.randn(1, 3, cfg.input_size, cfg.input_size)
    explanation = torch._dynamo.explain(model)(x, torch.rand(1), torch.tensor([1]))
    assert explanation.graph_break_count == 0


@pytest.mark.parametrize("preset,overrides,key", [
    ("diffit_cifar10", ["window_size=3"], "model.window_size"),
    ("diffit_cifar10", ["unet_blocks=[2,2]"], "model.unet_blocks"),
    ("diffit_cifar10", ["unet_channels=[128,200,256]"], "model.unet_channels"),
    ("diffit_cifar10", ["input_size=30"], "model.input_size"),
    ("diffit_cifar10", ["repa=true"], "model.repa"),
    ("diffit_cifar10", ["rel_pos_bias=none", "tmsa_time=rel_bias"], "model.tmsa_time"),
    ("diffit_cifar10", ["tmsa_time=sometimes"], "model.tmsa_time"),
    ("diffit_latent_xl2", ["window_size=5"], "model.window_size"),
    ("jit_b16", ["time_conditioning=tmsa"], "model.in_context_tokens"),
    ("diffit_latent_xl2", ["time_embed_dim=512"], "model.time_embed_dim"),
])
def test_invalid_diffit_configs_are_refused_naming_the_key(preset, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        model_config(preset, overrides)


def test_sdpa_window_path_matches_explicit_softmax_with_shift_and_time_bias():
    """The SDPA call with a (batch, window)-broadcast mask equals an explicit softmax over each window."""
    module = tmsa(size=8, window=4, shift=2, time="rel_bias")
    x, time = tokens(size=8)
    B, w, s = 2, 4, 2
    q, k, v = module.qkv(x).view(B, 8, 8, 3, HEADS, -1).unbind(3)
    q, k, v = (window_partition(torch.roll(z, (-s, -s), (1, 2)), w).permute(0, 1, 3, 2, 4) for z in (q, k, v))
    logits = (q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS) + module.bias(time)[:, None]
              + module.shift_mask[None, :, None])
    out = window_merge((F.softmax(logits, -1) @ v).permute(0, 1, 3, 2, 4), w, 8, 8)
    expected = module.proj(torch.roll(out, (s, s), (1, 2)).reshape(B, 8, 8, DIM))
    torch.testing.assert_close(module(x, time), expected)


# ---- in the harness ---------------------------------------------------------------------------

SIZE_KEYS = {"input_size", "num_classes", "unet_channels", "unet_blocks", "unet_head_dim", "gn_groups",
             "time_embed_dim", "time_freq_dim"}


def test_diffit_experiments_resolve_and_the_demo_keeps_the_papers_switches(tmp_path):
    from PIL import Image

    from harness.configure import resolve
    Image.new("RGB", (64, 64)).save(tmp_path / "00000.png")       # a flat folder, as FFHQ's
    for name, preset in (("diffit_cifar10_paper", "diffit_cifar10"), ("diffit_ffhq64_paper", "diffit_ffhq64")):
        cfg = resolve([f"+experiment={name}", f"data.path={tmp_path}"]).cfg
        assert cfg.model.replace(num_classes=0) == model_config(preset, ["num_classes=0"])
        assert (cfg.objective.kind, cfg.eval.sampler.kind, cfg.model.num_classes) == ("edm", "edm_heun", 0)
    latent = resolve(["+experiment=diffit_latent_paper", f"data.path={tmp_path}"], check_paths=False).cfg
    assert latent.model == model_config("diffit_latent_xl2") and latent.vae.scaling_factor == 0.18215
    demo = resolve(["+experiment=tiny_diffit"]).cfg.model
    paper = model_config("diffit_cifar10")
    changed = {key for key in vars(paper) if getattr(paper, key) != getattr(demo, key)}
    assert changed <= SIZE_KEYS, changed - SIZE_KEYS


def test_unconditional_model_trains_and_evaluates(tmp_path):
    """model.num_classes=0 (DiffiT's image-space setting): every sample gets the null label, samples have
    no labels, so the offline metric reports FD without class consistency."""
    from harness.configure import resolve
    from harness.trainer import train
    items = {"run.out_dir": str(tmp_path / "runs"), "run.name": "uncond", "train.steps": 4, "train.global_batch": 8,
             "model.num_classes": 0, "eval.metric": "offline", "eval.num_samples": 10, "eval.batch_size": 10,
             "eval.sampler.steps": 2, "eval.cache_dir": str(tmp_path / "cache")}
    result = train(resolve(["+experiment=tiny_diffit", *[f"{k}={v}" for k, v in items.items()]]))
    assert set(result.metrics) == {"fd"} and math.isfinite(result.metrics["fd"])
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.cfg_scale=2\.0: an unconditional model"):
        resolve(["+experiment=tiny_diffit", "model.num_classes=0", "eval.sampler.cfg_scale=2.0"])


def test_embedded_diffit_sweep_trains_and_evaluates_on_the_cpu(tmp_path):
    """sweeps/tiny_diffit.yaml (DiffiT Table 6 in miniature), shortened, run for real in-process: every row
    finishes with an FD, and the table's cells are the runs' own numbers."""
    import json

    import yaml

    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    from commands.cli import main
    from harness.sweep.sweep import Sweep
    spec = yaml.safe_load(open("sweeps/tiny_diffit.yaml"))
    spec["overrides"].update({"train.steps": 4, "train.global_batch": 8, "train.log_every": 2,
                              "eval.num_samples": 10, "eval.batch_size": 10, "eval.sampler.steps": 2,
                              "eval.cache_dir": str(tmp_path / "cache")})
    spec.update(output=str(tmp_path / "out"), executor={"kind": "debug"})
    path = tmp_path / "tiny_diffit.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main([str(path)]) == 0
    sweep = load_sweep_runs(Sweep.open(path))
    table = build_table(sweep, metric="fd").frame.set_index("label")
    assert list(table.index) == [row["label"] for row in spec["rows"]]
    for run in sweep.frame.itertuples():
        final = json.loads((sweep.spec.folder / run.run_name / "final_metrics.json").read_text())
        assert table.loc[run.label, "fd mean"] == pytest.approx(final["fd"], rel=1e-12)
    from harness.configure import resolve
    from models.complexity import measure
    for row in spec["rows"]:                                  # each row's own model, counted
        cfg = resolve(["+experiment=tiny_diffit", *[f"{k}={v}" for k, v in row["set"].items()]]).cfg.model
        assert table.loc[row["label"], "params"] == measure(cfg).params
    assert table["params"].nunique() == 3


def test_audit_names_diffit_sources():
    from harness.audit import differences, load_flat
    _, ours = load_flat("diffit_cifar10_paper", ["model.tmsa_time=none", "model.unet_blocks=[2,2,2]"])
    name, paper = load_flat("diffit_cifar10_paper", [])
    rows = {row["key"]: row for row in differences(ours, paper, name)}
    assert set(rows) == {"model.tmsa_time", "model.unet_blocks"}
    assert rows["model.tmsa_time"]["source"].startswith("DiffiT (arXiv 2312.02139) eq. 3-5")
    assert rows["model.unet_blocks"][name] == [4, 4, 4]
