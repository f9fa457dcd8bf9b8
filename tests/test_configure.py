"""Config composition, validation messages, the run signature, and the paper audit."""
import json
import subprocess
import sys

import pytest

from harness.audit import differences, load_flat
from harness.configure import compose_config, config_signature, resolve
from toolkit.errors import ConfigError


def test_experiments_compose_with_their_model_preset():
    for experiment, preset in [("pixeldit_xl_paper", "pixeldit_xl"), ("jit_l16_paper", "jit_l16"),
                               ("dit_xl2_paper", "dit_xl2"), ("jitmask_code", "jitmask"),
                               ("sit_xl2_repa_paper", "sit_xl2_repa")]:
        composed, chosen = compose_config([f"+experiment={experiment}"])
        assert chosen == preset and composed.experiment == experiment


def test_group_and_field_overrides_apply():
    resolved = resolve(["+experiment=tiny_digits", "model.adaln=B", "optim.betas=[0.9,0.95]"])
    assert resolved.cfg.model.adaln == "B" and resolved.cfg.optim.betas == [0.9, 0.95]
    assert resolved.model_preset == "pixeldit_xl"
    composed, chosen = compose_config(["+experiment=pixeldit_xl_paper", "model=dit_xl16"])
    assert chosen == "dit_xl16" and composed.model.pixel_pathway is False


@pytest.mark.parametrize("overrides, start", [
    (["model.nonsense=1"], "overrides: model.nonsense: Key 'nonsense' not in 'ModelConfig'"),
    (["optim.lr=abc"], "overrides: optim.lr: Value 'abc'"),
    (["model=nope"], "overrides: model='nope': unknown option"),
    (["+experiment=nope"], "overrides: experiment='nope': unknown option"),
    (["+experiment=tiny_digits", "model.adaln=Q"], "model.adaln='Q': unknown value"),
    (["+experiment=tiny_digits", "model.compaction=5"], "model.compaction=5: the compaction rate must divide"),
    (["+experiment=tiny_digits", "optim.schedule=linear"], "optim.schedule='linear': unknown value"),
    (["+experiment=tiny_digits", "repa.weight=0.5"], "repa.weight=0.5: REPA needs the model's hook"),
    (["+experiment=tiny_digits", "model.learn_sigma=true"], "model.learn_sigma"),
    (["+experiment=tiny_digits", "ema.eval_decay=0.5"], "ema.eval_decay=0.5"),
    (["+experiment=tiny_digits", "data.resolution=64"], "data.resolution=64"),
    (["+experiment=tiny_digits", "model.prediction=noise", "objective.kind=ddpm", "eval.sampler.kind=ddpm",
      "eval.sampler.steps=2000"], "eval.sampler.steps=2000: more than the objective.ddpm_steps=1000"),
    (["+experiment=pixeldit_xl_paper"], "data.path: required for data.name=imagefolder"),
    (["+experiment=pixeldit_xl_paper", "data.path=/does/not/exist"], "data.path='/does/not/exist'"),
    (["+experiment=dit_xl2_paper", "data.path=/tmp"], "model.latent_downsample=8: training on VAE latents"),
    (["+experiment=sit_xl2_repa_paper", "data.path=/tmp"], "model.latent_downsample=8: training on VAE latents"),
    (["+experiment=tiny_digits", "eval.sampler.cfg_channels=4"], "eval.sampler.cfg_channels=4: more than the "
     "guided quantity's model.in_channels=3"),
    (["+experiment=tiny_digits", "eval.sampler.kind=sde", "objective.noise_scale=2.0"],
     "eval.sampler.kind='sde': the SDE sampler's score assumes unit noise"),
])
def test_bad_configs_fail_with_one_line_naming_the_key(overrides, start):
    with pytest.raises(ConfigError) as err:
        resolve(overrides)
    assert str(err.value).startswith(start), str(err.value)
    assert "\n" not in str(err.value)


def test_signature_ignores_paths_and_logging_but_not_switches():
    base = resolve(["+experiment=tiny_digits"]).cfg
    same = resolve(["+experiment=tiny_digits", "run.name=other", "run.out_dir=/elsewhere", "train.log_every=7",
                    "data.num_workers=0", "checkpoint.every_steps=11", "tracking.experiment=x"]).cfg
    assert config_signature(base) == config_signature(same)
    for change in ["model.adaln=B", "run.seed=1", "optim.lr=2e-3", "objective.p_mean=-0.8"]:
        assert config_signature(resolve(["+experiment=tiny_digits", change]).cfg) != config_signature(base)


def test_audit_of_the_seeds_code_finds_every_issue_the_seeds_list():
    _, ours = load_flat("jitmask_code", [])
    _, paper = load_flat("pixeldit_xl_paper", [])
    keys = {row["key"] for row in differences(ours, paper, "pixeldit_xl_paper")}
    seeds_000 = {"model.adaln", "model.s_cond_timestep", "model.compaction", "repa.weight", "optim.betas",
                 "optim.grad_clip", "model.prediction", "optim.lr", "objective.p_mean", "objective.p_std",
                 "model.in_context_tokens", "model.hint_fraction"}
    seeds_001 = {"optim.schedule", "model.depth", "model.pixel_depth", "model.patch_embed", "ema.decays"}
    assert seeds_000 | seeds_001 <= keys
    assert not {k for k in keys if k.startswith(("run.", "tracking.", "checkpoint."))}


def test_audit_of_a_recipe_against_itself_is_empty_and_overrides_show():
    _, paper = load_flat("pixeldit_xl_paper", [])
    assert differences(paper, paper, "pixeldit_xl_paper") == []
    _, changed = load_flat("pixeldit_xl_paper", ["model.adaln=B"])
    rows = differences(changed, paper, "pixeldit_xl_paper")
    assert [(r["key"], r["this"], r["pixeldit_xl_paper"]) for r in rows] == [("model.adaln", "B", "C")]
    assert "Fig. 2(C)" in rows[0]["source"]


def test_audit_command_reads_a_saved_run_config(tmp_path):
    from harness.configure import to_yaml
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(resolve(["+experiment=tiny_digits"]).cfg))
    out = subprocess.run([sys.executable, "-m", "harness.audit", str(path), "--against", "pixeldit_xl_paper",
                          "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    keys = {row["key"] for row in json.loads(out.stdout)}
    assert {"model.depth", "data.name", "train.global_batch"} <= keys
