"""The analysis commands on tiny random models (fast)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import fuse as fuse_lib
from c2cjax.analysis import __main__ as cli
from c2cjax.analysis import caches, enrichment, plots, rank, transform
from c2cjax.models.tiny import tiny_lm
from tests.test_eval_runner import QUESTIONS, char_tokenizer


@pytest.fixture(scope="module")
def models():
  r = tiny_lm("qwen3", char_tokenizer(), seed=0)
  s = tiny_lm("gemma3", char_tokenizer(reverse=True, chat=False), seed=1)
  return r, s


def test_oracle_keeps_the_question_slots_of_the_few_shot_cache(models):
  r, _ = models
  q, shots = QUESTIONS[4], QUESTIONS[:2]
  direct_text, few_text = enrichment.texts(q, shots, r.tokenizer)
  p = enrichment.split_prompts(direct_text, few_text, r.tokenizer)
  assert r.tokenizer.decode(p.direct) == direct_text
  assert r.tokenizer.decode(p.few_shot) == few_text
  assert len(p.shots) > 0 and "Which bone" in r.tokenizer.decode(p.shots)
  # Slow reference: unpadded few-shot prefill, drop the exemplar slots, run the last token.
  few = p.few_shot
  _, full = r.apply(r.params, few[None, :-1], r.init_cache(1, len(few) - 1))
  keep = np.r_[0:len(p.head), len(p.head) + len(p.shots):len(few) - 1]
  n = len(p.direct) - 1
  ref = full.replace(k=full.k[:, :, :, keep], v=full.v[:, :, :, keep],
                     end=jnp.int32(n)).pad_to(n + 1)
  ref_logits, _ = r.apply(r.params, p.direct[None, -1:], ref)
  d = caches.prefill(r, p.direct[:-1])
  f = caches.prefill(r, few[:-1])
  oracle = caches.with_slots(d, f, caches.real_slots(f)[keep])
  np.testing.assert_allclose(caches.next_logits(r, oracle, int(p.direct[-1])),
                             np.asarray(ref_logits[0, -1]), atol=2e-4)
  # The oracle differs from direct (the exemplars changed the question's keys/values).
  assert np.abs(caches.next_logits(r, d, int(p.direct[-1]))
                - caches.next_logits(r, oracle, int(p.direct[-1]))).max() > 1e-4
  # No layer swapped: the direct cache itself.
  same = caches.with_slots(d, f, caches.real_slots(f)[keep], [])
  np.testing.assert_array_equal(np.asarray(same.k), np.asarray(d.k))


def test_enrichment_run(models):
  r, _ = models
  out = enrichment.run(r, QUESTIONS[2:], QUESTIONS[:2], groups={"all": [0, 1, 2], "first": [0]})
  assert out["n"] == 3 and out["shots"] == 2 and len(out["single_layers"]) == 3
  assert out["groups"]["all"]["gold_prob"] == pytest.approx(out["variants"]["oracle"]["gold_prob"])
  probs = [v["gold_prob"] for v in out["variants"].values()]
  assert all(0 < p < 1 for p in probs) and len(set(probs)) == 3
  assert enrichment.default_groups(30)["layers 0-7"] == list(range(8))


def test_effective_rank():
  assert rank.effective_rank(np.eye(6)) == pytest.approx(6.0)
  assert rank.effective_rank(np.outer(np.arange(1, 5), np.arange(1, 4))) == pytest.approx(1.0)
  x = np.diag([3.0, 1.0])
  p = np.array([0.75, 0.25])
  assert rank.effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def _fuser(r, s, gate):
  config = fuse_lib.FuserConfig.for_models(r.config, s.config, hidden_dim=32, intermediate_dim=32)
  layer_map = fuse_lib.LayerMap((1, 2), (2, 3))  # receiver layer 0 unfused
  params = fuse_lib.init(config, layer_map, jax.random.PRNGKey(0))
  params = {**params, "key_gate_logit": jnp.full_like(params["key_gate_logit"], gate),
            "value_gate_logit": params["value_gate_logit"].at[0].set(-gate).at[1:].set(gate)}
  return params, config, layer_map


def test_rank_before_and_after_fusion(models):
  r, s = models
  texts = [q.question for q in QUESTIONS[:3]]
  closed = rank.run(r, s, *_fuser(r, s, -1.0), texts)
  for row in closed["layers"]:
    assert row["k_before"] == pytest.approx(row["k_after"])
  opened = rank.run(r, s, *_fuser(r, s, 1.0), texts)
  assert [row["fused"] for row in opened["layers"]] == [False, True, True]
  assert opened["layers"][0]["k_after"] == pytest.approx(opened["layers"][0]["k_before"])
  assert opened["layers"][1]["k_after"] != pytest.approx(opened["layers"][1]["k_before"])
  assert opened["layers"][1]["v_after"] == pytest.approx(opened["layers"][1]["v_before"])  # closed
  assert opened["tokens"] == sum(len(caches.aligned_ids(r, s, t)[0]) for t in texts)


def test_transform(models, tmp_path):
  r, s = models
  texts = [f"{q.question} {' '.join(q.choices)}" for q in QUESTIONS] * 2
  out = transform.run(r, s, texts, receiver_layer=2, sharer_layer=3, steps=150, hidden=64,
                      embed_points=40)
  for kv in ("k", "v"):
    res = out["kv"][kv]
    assert res["train_relative_error"] < 0.5
    assert np.isfinite(res["heldout_relative_error"])
    emb = res["embedding"]
    assert np.asarray(emb["source"]).shape == np.asarray(emb["transformed"]).shape == (40, 2)
  assert plots.plot_transform(out, tmp_path / "t.png").stat().st_size > 1000
  # Same model on both sides: the map is the identity, learned to a small held-out error.
  self_out = transform.run(r, r, texts, receiver_layer=1, sharer_layer=1, steps=300, hidden=64)
  assert self_out["kv"]["k"]["heldout_linear_relative_error"] < 1e-6
  assert self_out["kv"]["k"]["heldout_relative_error"] < 0.2


def test_gates_curves_and_cli(models, tmp_path):
  r, s = models
  params, config, layer_map = _fuser(r, s, 2.0)
  fuse_lib.save(tmp_path / "fuser", (params,), (config,), (layer_map,), {"self_fusion": False})
  g = plots.gates(tmp_path / "fuser")
  assert [p["receiver_layer"] for p in g["pairs"]] == list(layer_map.receiver)
  assert [p["value_open"] for p in g["pairs"]] == [False, True]
  assert g["open_fraction"]["key"] == 1.0 and g["open_fraction"]["value"] == 0.5
  run = tmp_path / "run"
  run.mkdir()
  rows = [{"step": 5, "train/loss": 2.0, "train/gate_open": 0.5},
          {"step": 10, "train/loss": 1.5, "eval/c2c_loss": 1.4, "eval/receiver_loss": 1.6}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
  assert plots.curves(plots.read_metrics(run))["train/loss"] == [(5, 2.0), (10, 1.5)]
  for argv in (["gates", "--fuser", str(tmp_path / "fuser")], ["curves", "--run", str(run)]):
    cli.main(argv + ["--out", str(tmp_path / "out")])
    name = argv[0]
    assert json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.read_metrics(tmp_path / "nothing")
  # an earlier result is kept; bad counts and missing inputs stop before any work
  before = (tmp_path / "out" / "gates.json").read_bytes()
  with pytest.raises(SystemExit) as e:
    cli.main(["gates", "--fuser", str(tmp_path / "fuser"), "--out", str(tmp_path / "out")])
  assert e.value.code == 2 and (tmp_path / "out" / "gates.json").read_bytes() == before
  for argv in (["probe", "--train", "-5"], ["enrichment", "--limit", "0"],
               ["transform", "--steps", "x"]):
    with pytest.raises(SystemExit) as e:
      cli.main(argv + ["--out", str(tmp_path / "fresh")])
    assert e.value.code == 2, argv
  with pytest.raises(SystemExit) as e:
    cli.main(["curves", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "fresh")])
  assert e.value.code == 1 and not (tmp_path / "fresh").exists()


def test_probe_finds_a_planted_answer_and_not_noise():
  from c2cjax.analysis import probe
  rng = np.random.default_rng(0)
  n, d, c = 300, 40, 12
  y = rng.integers(0, c, n)
  opts = np.stack([np.concatenate([[t], rng.choice(np.delete(np.arange(c), t), 3, False)])
                   for t in y])
  ans = np.zeros(n, int)
  planted = rng.normal(size=(n, d)) + 5.0 * np.eye(c, d)[y]  # the class in the first c dims
  noise = rng.normal(size=(n, d))
  for x, lo, hi in ((planted, 0.95, 1.0), (noise, 0.1, 0.42)):
    r = probe.fit_layer(x[:200], y[:200], opts[:200], ans[:200], x[200:], y[200:],
                        opts[200:], ans[200:], c)
    assert lo <= r["accuracy"] <= hi, r
  wide = rng.normal(size=(n, 500)) + 10.0 * np.eye(c, 500)[y]  # more features than examples
  r = probe.fit_layer(wide[:200], y[:200], opts[:200], ans[:200], wide[200:], y[200:],
                      opts[200:], ans[200:], c)
  assert r["accuracy"] > 0.9


def test_probe_features_and_labels(models):
  from c2cjax.analysis import probe
  from c2cjax.data import synthetic
  r, _ = models
  items = probe.closed_questions("heldout", 3)
  assert all(synthetic.ATTRIBUTES[qa.attribute][2] for _, qa in items)
  y, opts, ans = probe.labels(items)
  names = probe.classes()
  assert [names[y[i]].split(":")[1] for i in range(3)] == [qa.answer_text for _, qa in items]
  assert (opts[np.arange(3), ans] == y).all()
  template = synthetic.cloze_template(r.tokenizer)
  with_doc = probe.last_slot_features(r, template, items, True)
  without = probe.last_slot_features(r, template, items, False)
  cfg = r.config
  assert with_doc.shape == (3, cfg.num_layers, 2 * cfg.num_kv_heads * cfg.head_dim)
  assert np.abs(with_doc - without).max() > 1e-4  # the document reached the last slot
