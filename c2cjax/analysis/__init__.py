"""The paper's oracle experiments and cache analyses, as functions and a CLI.

  python -m c2cjax.analysis <command> [--options]   (``--help`` per command)

Commands (each writes ``{out}/{command}.json`` and ``{out}/{command}.png``):
  enrichment  Direct vs few-shot vs oracle (few-shot prefill, exemplar slots dropped, same
              cache length) and oracle enrichment of single layers / layer groups.
  transform   a 3-layer MLP mapping the sharer's per-token keys/values to the receiver's on
              the same text: held-out error and a t-SNE (or PCA) of source/target/transformed.
  rank        effective rank of the receiver's keys/values per layer before / after fusion.
  gates       gate logits and openness per layer of a fuser checkpoint.
  curves      training curves of a run (its ``metrics.jsonl``).

Modules: ``caches`` (prefill and slot helpers on ``LM.apply``), ``enrichment``,
``transform``, ``rank``, ``plots`` (figures; gates and curves).
"""
