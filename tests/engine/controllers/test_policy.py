"""The policy network: size, MACs, the residual-stream read, SKIP offsets, and checkpoints that
refuse every kind of bad file with a ValueError naming notebook 03."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet, load_policy, save_policy
from anee.engine.profiler import FEATURES


def test_policy_size_and_checkpoint(tmp_path):
    p = PolicyNet(len(FEATURES))
    assert sum(t.numel() for t in p.parameters()) <= 10_000
    assert p.macs == len(FEATURES) * 32 + 32 * 32 + 32 * 3
    path = save_policy(tmp_path / "w.safetensors", p, "warmstart", 30)
    q = load_policy(path, 30, kind="warmstart")
    x = torch.randn(4, len(FEATURES))
    assert torch.equal(p(x), q(x))
    with pytest.raises(ValueError, match="num_layers"):
        load_policy(path, 24)
    with pytest.raises(ValueError, match="kind"):
        load_policy(path, 30, kind="rl")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid safetensors.*notebook 03"):
        load_policy(bad, 30)
    import json

    from anee.core.checkpoints import save_checkpoint
    config = p.checkpoint_config()
    sd = p.checkpoint_tensors()
    sd["net.0.weight"] = torch.zeros(32, 5)
    save_checkpoint(tmp_path / "p.safetensors", sd, PolicyNet.FORMAT, config)
    with pytest.raises(ValueError, match=r"tensor 'net.0.weight' has shape \(32, 5\)"):
        load_policy(tmp_path / "p.safetensors", 30)
    save_checkpoint(tmp_path / "v1.safetensors", p.checkpoint_tensors(), "anee-policy", config)
    with pytest.raises(ValueError, match="format 'anee-policy'.*notebook 03"):
        load_policy(tmp_path / "v1.safetensors", 30)
    save_checkpoint(tmp_path / "rank.safetensors", p.checkpoint_tensors(), PolicyNet.FORMAT, {**config, "rank": "x"})
    with pytest.raises(ValueError, match="does not describe a valid PolicyNet.*rank"):
        load_policy(tmp_path / "rank.safetensors", 30)
    nan = dict(p.checkpoint_tensors(), **{"net.0.bias": torch.full((32,), float("nan"))})
    save_checkpoint(tmp_path / "nan.safetensors", nan, PolicyNet.FORMAT, config)
    with pytest.raises(ValueError, match="non-finite"):
        load_policy(tmp_path / "nan.safetensors", 30)
    zero_std = dict(p.checkpoint_tensors(), std=torch.zeros(len(FEATURES)))
    save_checkpoint(tmp_path / "std.safetensors", zero_std, PolicyNet.FORMAT, config)
    with pytest.raises(ValueError, match="std"):
        load_policy(tmp_path / "std.safetensors", 30)
    save_checkpoint(tmp_path / "slack.safetensors", p.checkpoint_tensors(), PolicyNet.FORMAT,
                    {**config, "pacing": {"slack": -0.1}})
    with pytest.raises(ValueError, match="slack"):
        load_policy(tmp_path / "slack.safetensors", 30)
    assert json.loads(json.dumps(config)) == config  # the config is plain JSON


def test_policy_reads_the_residual_stream(tmp_path):
    """A rank-r read of the RMS-normalized stream: within the size limit at SmolLM2's width (576),
    scale-invariant, exact MAC count, required when configured, and saved / loaded with its shape."""
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=576, rank=12)
    assert sum(t.numel() for t in p.parameters()) <= 10_000
    assert p.macs == (len(FEATURES) + 12) * 32 + 32 * 32 + 32 * 3 + 576 * 12 + 3 * 576
    f, h = torch.randn(5, len(FEATURES)), torch.randn(5, 576)
    with torch.no_grad():
        p.read.weight.normal_()
        p.h_mean.normal_()
    assert torch.allclose(p(f, h), p(f, 3.0 * h), atol=1e-5)  # the read sees the stream's direction only
    assert not torch.allclose(p(f, h), p(f, torch.randn(5, 576)))
    with pytest.raises(ValueError, match="pass hidden"):
        p(f)
    with pytest.raises(ValueError, match="hidden_size and rank"):
        PolicyNet(len(FEATURES), 32, hidden_size=576, rank=0)
    path = save_policy(tmp_path / "r.safetensors", p, "rl", 30)
    q = load_policy(path, 30)
    assert (q.hidden_size, q.rank) == (576, 12) and torch.equal(p(f, h), q(f, h))


def test_skip_offsets_interpolate_and_shift_only_skip(tmp_path):
    p = PolicyNet(len(FEATURES))
    b = torch.tensor([0.2, 0.5, 0.6, 0.7, 1.0])
    assert torch.equal(p.skip_offset(b), torch.zeros(5))  # uncalibrated
    p.set_skip_offsets(torch.tensor([0.5, 0.7]), torch.tensor([1.0, 3.0]))
    assert torch.allclose(p.skip_offset(b), torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]))  # clamped outside, linear inside
    with pytest.raises(ValueError, match="increasing"):
        p.set_skip_offsets(torch.tensor([0.7, 0.5]), torch.tensor([1.0, 3.0]))
    path = save_policy(tmp_path / "o.safetensors", p, "rl", 30)
    assert torch.equal(load_policy(path, 30).skip_offset(b), p.skip_offset(b))


def test_full_prompt_offsets_are_a_second_table_saved_only_when_set(tmp_path):
    """The table for tokens after a full-depth prompt is read with after_full_prompt=True, falls back to
    the first table while uncalibrated, and a policy without it saves the tensors it always had."""
    from anee.core.checkpoints import load_checkpoint
    from anee.engine.controllers.policy import FULL_PROMPT_KEYS

    p = PolicyNet(len(FEATURES))
    b = torch.tensor([0.5, 0.6, 0.7])
    p.set_skip_offsets(torch.tensor([0.5, 0.7]), torch.tensor([1.0, 3.0]))
    assert torch.equal(p.skip_offset(b, after_full_prompt=True), p.skip_offset(b))  # uncalibrated: the first table
    old = save_policy(tmp_path / "old.safetensors", p, "rl", 30)
    assert not set(FULL_PROMPT_KEYS) & set(load_checkpoint(old, PolicyNet.FORMAT, "")[0])
    assert torch.equal(load_policy(old, 30).skip_offset(b, after_full_prompt=True), p.skip_offset(b))
    p.set_skip_offsets(torch.tensor([0.6]), torch.tensor([-2.0]), after_full_prompt=True)
    assert torch.equal(p.skip_offset(b, after_full_prompt=True), torch.full((3,), -2.0))
    assert torch.allclose(p.skip_offset(b), torch.tensor([1.0, 2.0, 3.0]))  # the first table is untouched
    q = load_policy(save_policy(tmp_path / "new.safetensors", p, "rl", 30), 30)
    assert torch.equal(q.skip_offset(b, after_full_prompt=True), p.skip_offset(b, after_full_prompt=True))
    assert torch.equal(q.skip_offset(b), p.skip_offset(b))


def test_plan_saved_with_policy(tmp_path):
    p = PolicyNet(len(FEATURES))
    path = save_policy(tmp_path / "p.safetensors", p, "rl", 30, plan=PlanConfig(marginal=3, skip_share=0.25))
    assert load_policy(path, 30).plan_config() == PlanConfig(marginal=3, skip_share=0.25)
    assert load_policy(save_policy(tmp_path / "q.safetensors", p, "rl", 30), 30).plan_config() is None
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["config"])["plan"]["marginal"] == 3


def _bad_policy_file(tmp_path, case: str):
    """A policy checkpoint broken in one way (written as `save_policy` would, then tampered with)."""
    from safetensors.torch import save_file

    from anee.core.checkpoints import save_checkpoint

    p = PolicyNet(len(FEATURES))
    good = save_policy(tmp_path / "good.safetensors", p, "rl", 30)
    assert load_policy(good, 30).trained_for == p.trained_for  # untampered, the file loads
    config, tensors = p.checkpoint_config(), p.checkpoint_tensors()
    path = tmp_path / f"{case}.safetensors"
    if case == "nan_weight":
        tensors["net.2.weight"] = torch.full_like(tensors["net.2.weight"], float("nan"))
    elif case == "zero_std":
        tensors["std"] = torch.zeros(len(FEATURES))
    elif case == "negative_slack":
        config["pacing"] = {"slack": -0.1}
    elif case == "bad_plan_key":
        config["plan"] = {"marginal": 3, "skip_fraction": 0.5}
    elif case == "negative_hidden":
        config["hidden"] = -5
    elif case == "huge_hidden":
        config["hidden"] = 10**6
    elif case == "rank_as_string":
        config["rank"] = "4"
    elif case == "rank_as_bool":
        config.update(rank=True, hidden_size=True)
    elif case == "skip_share_as_bool":
        config["plan"] = {"marginal": 3, "skip_share": True}
    elif case == "features_as_string":
        config["features"] = ",".join(FEATURES)
    elif case == "num_layers_as_float":
        config["num_layers"] = 30.0
    elif case == "non_json_config":
        save_file(tensors, str(path), metadata={"format": PolicyNet.FORMAT, "config": "{'hidden': 32"})
        return path
    elif case == "decreasing_offsets":
        config["skip_offsets"] = 2
        tensors.update(offset_budgets=torch.tensor([0.7, 0.5]), skip_offsets=torch.tensor([1.0, 2.0]))
    save_checkpoint(path, tensors, PolicyNet.FORMAT, config)
    return path


CAUSES = {
    "nan_weight": r"tensor 'net.2.weight' holds non-finite values",
    "zero_std": r"feature scales \(std\) must be positive",
    "decreasing_offsets": r"skip offsets need increasing budgets",
    "negative_slack": r"pacing slack must be a finite number in \[0, 1\], got -0.1",
    "bad_plan_key": r"unexpected keyword argument 'skip_fraction'",
    "negative_hidden": r"PolicyNet hidden must be an integer >= 1 and <= 4096, got -5",
    "non_json_config": r"its config is not valid JSON",
    "huge_hidden": r"PolicyNet hidden must be an integer >= 1 and <= 4096, got 1000000",
    "rank_as_string": r"PolicyNet rank must be an integer .*got str '4'",
    "rank_as_bool": r"PolicyNet hidden_size must be an integer .*got bool True",
    "skip_share_as_bool": r"plan skip_share must be a finite number in \[0, 1\].*got bool True",
    "features_as_string": r"features of the wrong type",
    "num_layers_as_float": r"num_layers must be an integer >= 1.*got float 30.0",
}


@pytest.mark.parametrize("case", list(CAUSES))
def test_bad_policy_checkpoints_name_notebook_03(tmp_path, case):
    path = _bad_policy_file(tmp_path, case)
    with pytest.raises(ValueError, match=CAUSES[case]) as err:
        load_policy(path, 30)
    message = str(err.value)
    assert str(path) in message and "re-run notebook 03 (warm-start) / 04 (RL) to regenerate it" in message


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                                     st.text(max_size=4)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3),
                           max_leaves=6)


@given(key=st.sampled_from(sorted(PolicyNet(len(FEATURES)).checkpoint_config())), value=JSON_VALUES)
def test_type_confused_policy_configs_give_a_value_error(tmp_path_factory, key, value):
    """Property: any config entry replaced by any JSON value loads (a value as good as the original)
    or is a ValueError naming the file and notebook 03; never another exception."""
    from anee.core.checkpoints import save_checkpoint

    p = PolicyNet(len(FEATURES))
    save_policy(tmp_path_factory.mktemp("ok") / "p.safetensors", p, "rl", 30)
    config = {**p.checkpoint_config(), key: value}
    path = save_checkpoint(tmp_path_factory.mktemp("confused") / "p.safetensors", p.checkpoint_tensors(),
                           PolicyNet.FORMAT, config)
    try:
        loaded = load_policy(path, 30)
    except ValueError as err:
        assert str(path) in str(err) and PolicyNet.FIX in str(err)
    else:
        assert loaded.checkpoint_config() == {**config, "skip_offsets": 0}

def test_policy_remembers_its_bypass_and_seed(tmp_path):
    from anee.core.checkpoints import save_checkpoint

    p = PolicyNet(len(FEATURES))
    path = save_policy(tmp_path / "w.safetensors", p, "warmstart", 30, bypass="linear tuned", seed=2)
    q = load_policy(path, 30)
    assert q.trained_for["bypass"] == "linear tuned" and q.trained_for["seed"] == 2
    assert q.trained_for == p.trained_for
    plain = load_policy(save_policy(tmp_path / "p.safetensors", PolicyNet(len(FEATURES)), "rl", 30), 30)
    assert plain.trained_for["bypass"] is None and plain.trained_for["seed"] is None  # the identity, no seed given
    # a checkpoint written before the optional keys existed still loads (as the identity, no seed)
    config = {k: v for k, v in p.checkpoint_config().items() if k not in ("bypass", "seed")}
    save_checkpoint(tmp_path / "old.safetensors", p.checkpoint_tensors(), PolicyNet.FORMAT, config)
    old = load_policy(tmp_path / "old.safetensors", 30, kind="warmstart")
    assert old.trained_for["bypass"] is None and old.trained_for["seed"] is None
    x = torch.randn(3, len(FEATURES))
    assert torch.equal(old(x), p(x))
    # the required keys stay required
    del config["plan"]
    save_checkpoint(tmp_path / "broken.safetensors", p.checkpoint_tensors(), PolicyNet.FORMAT, config)
    with pytest.raises(ValueError, match="does not describe a valid PolicyNet.*'plan'.*notebook 03"):
        load_policy(tmp_path / "broken.safetensors", 30)
