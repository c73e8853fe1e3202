"""A fuser records the models it was built for; ``C2C``, ``Fuser.load`` and the evaluation
refuse others with a message naming both sides, unless ``allow_mismatch`` (a warning)."""

import dataclasses

import jax
import numpy as np
import pytest

from c2cjax import fuse
from c2cjax.c2c import C2C
from c2cjax.fuse import Fuser
from c2cjax.models.tiny import tiny_lm


@pytest.fixture(scope="module")
def models():
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("llama3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(0), hidden_dim=32, intermediate_dim=48)
  return {"r": r, "s": s, "f": f, "deeper": tiny_lm("qwen3", seed=0, num_hidden_layers=6),
          "other": tiny_lm("qwen2", seed=0)}


def _ids(n=6):
  return np.full((1, n), 5, np.int32), np.ones((1, n), np.int32)


def test_init_records_the_models(models):
  f = models["f"]
  assert f.models["receiver"]["num_layers"] == 3 and f.models["receiver"]["arch"] == "qwen3"
  assert [m["arch"] for m in f.models["sharers"]] == ["llama"]
  assert "fingerprint" not in f.models["receiver"]
  assert f.pruned().models == f.models
  C2C(models["r"], [models["s"]], [f])  # the models it was built for


def test_c2c_refuses_a_deeper_receiver_naming_both(models):
  with pytest.raises(ValueError) as e:
    C2C(models["deeper"], [models["s"]], [models["f"]])
  msg = str(e.value)
  assert "receiver: trained for qwen3 'tiny:qwen3' (3 layers" in msg
  assert "given qwen3 'tiny:qwen3' (6 layers" in msg and "num_layers: 3 != 6" in msg
  assert "allow_mismatch=True" in msg


def test_c2c_refuses_another_architecture_naming_both(models):
  with pytest.raises(ValueError) as e:
    C2C(models["other"], [models["s"]], [models["f"]])
  msg = str(e.value)
  assert "receiver: trained for qwen3 'tiny:qwen3'" in msg
  assert "given qwen2 'tiny:qwen2'" in msg and "arch: 'qwen3' != 'qwen2'" in msg
  with pytest.raises(ValueError, match=r"sharer 1: trained for llama 'tiny:llama3'.*given "
                                       r"qwen3.*arch: 'llama' != 'qwen3'"):
    C2C(models["r"], [models["s"], models["r"]], [models["f"], models["f"]])


def test_allow_mismatch_warns_and_runs(models):
  with pytest.warns(UserWarning, match=r"trained for other models:\n  receiver: .*"
                                       r"num_layers: 3 != 6"):
    c2c = C2C(models["deeper"], [models["s"]], [models["f"]], allow_mismatch=True)
  tokens, mask = _ids()
  out, lengths, _ = c2c.generate_ids(tokens, mask, (tokens,), max_new_tokens=2)
  assert out.shape == (1, 2) and lengths.shape == (1,)


def test_a_fuser_without_a_record_is_not_checked(models):
  bare = dataclasses.replace(models["f"], models=None)
  c2c = C2C(models["deeper"], [models["s"]], [bare])
  tokens, mask = _ids()
  out, _, _ = c2c.generate_ids(tokens, mask, (tokens,), max_new_tokens=2)
  assert out.shape == (1, 2)


def test_save_load_keeps_the_record_and_load_checks(models, tmp_path):
  f = models["f"]
  f.save(tmp_path / "f")
  back = Fuser.load(tmp_path / "f")
  assert back.models == f.models
  Fuser.load(tmp_path / "f", models["r"], models["s"])
  with pytest.raises(ValueError, match=r"receiver: trained for .*3 layers.*given .*6 layers"):
    Fuser.load(tmp_path / "f", receiver=models["deeper"])
  with pytest.warns(UserWarning, match="sharer 0: trained for llama"):
    Fuser.load(tmp_path / "f", sharer=models["r"], allow_mismatch=True)
  with pytest.raises(ValueError, match="num_layers: 3 != 6"):
    C2C(models["deeper"], [models["s"]], [back])
  dataclasses.replace(f, models=None).save(tmp_path / "bare")
  assert Fuser.load(tmp_path / "bare", receiver=models["deeper"]).models is None


def test_load_fusers_gives_each_fuser_its_sharer(models, tmp_path):
  from c2cjax.evaluation.systems import load_fusers
  from c2cjax.models.identity import identity
  r, s, f = models["r"], models["s"], models["f"]
  record = {"receiver": identity(r), "sharers": [identity(s), identity(r)]}
  fuse.save(tmp_path / "multi", (f.params, f.params), (f.config, f.config),
            (f.layer_map, f.layer_map), {"models": record})
  a, b = load_fusers(tmp_path / "multi", prune=False)
  with pytest.raises(ValueError, match="holds 2 fusers .*load_fusers"):
    Fuser.load(tmp_path / "multi")
  assert a.models == {"receiver": record["receiver"], "sharers": [record["sharers"][0]]}
  assert b.models["sharers"] == [record["sharers"][1]]
  with pytest.raises(ValueError, match="sharer 1: trained for qwen3.*given llama"):
    C2C(r, [s, s], [a, b])


def test_eval_systems_refuse_or_allow(tmp_path, monkeypatch):
  """The evaluation's C2C systems: a fuser recorded for a 2-layer receiver refused on
  ``tiny:qwen3`` (3 layers), and built with ``config.allow_mismatch``."""
  from c2cjax.defaults import eval_config
  from c2cjax.evaluation import systems
  from c2cjax.evaluation.systems import build_systems
  monkeypatch.setattr(systems, "Fused", lambda c2c, **_: c2c)  # tiny models have no tokenizer
  r, s = tiny_lm("qwen3", seed=0, num_hidden_layers=2), tiny_lm("llama3", seed=1)
  Fuser.init(r, s, jax.random.PRNGKey(0), hidden_dim=32,
             intermediate_dim=48).save(tmp_path / "fuser")
  config = eval_config()
  config.receiver, config.sharers = "tiny:qwen3", ("tiny:llama3",)
  config.fusers, config.systems = (str(tmp_path / "fuser"),), ("c2c",)
  assert config.allow_mismatch is False
  with pytest.raises(ValueError, match=r"receiver: trained for qwen3 'tiny:qwen3' \(2 layers"
                                       r".*given qwen3 'tiny:qwen3' \(3 layers"):
    build_systems(config, log=lambda _: None)
  config.allow_mismatch = True
  with pytest.warns(UserWarning, match="num_layers: 2 != 3"):
    (system,) = build_systems(config, log=lambda _: None)
  assert system.name == "c2c" and system.answerer.receiver.config.num_layers == 3
