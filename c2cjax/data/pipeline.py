"""The grain input pipeline for C2C training.

  source records -> seeded shuffle -> repeat -> per-host shard -> encode + align
  (host, threads) -> padded batches of static shapes -> prefetch

Every host shuffles the same way and reads only its own blocks of the shuffled stream, so
with ``shard_block`` = the per-host micro-batch the global batches are the same records in
the same order for any number of hosts (a multi-host run matches a one-host run), as long
as no record is skipped (a prompt longer than ``max_len``): a host that skips one takes
its next own record instead, so the hosts' shares stay disjoint but the batches then differ
from a one-host run's.

Batches are dicts of ``[B, T]`` int32 arrays: ``receiver_ids``, ``attention_mask``,
``loss_mask`` (token t is a target), ``fuse_mask`` (fuse the sharer at t) and, with
aligners, ``sharer_ids`` (always a tuple of arrays, one per sharer); with a sharer-only
context, ``sharer_context_ids`` / ``sharer_context_mask`` (tuples of ``[B, C]``, fixed C,
already left-padded by the encoder from the record's ``sharer_context``). Training batches
are right-padded; ``T`` is the smallest of a few bucket lengths that fits the batch
(or always ``max_len``), so a jitted step compiles once per bucket. A short final
batch (``drop_remainder=False``) is filled with empty rows (all masks 0).

The iterator (``iter(dataset)``) is a ``grain.DatasetIterator``: ``get_state()`` /
``set_state()`` resume at the exact next batch, and orbax checkpoints it with
``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``.
"""

import dataclasses
from typing import Any, Literal, Mapping, Sequence

import grain

from c2cjax import text
from c2cjax.data import chat

Side = Literal["right", "left"]


def pad_examples(examples: Sequence[Mapping[str, Any]], *, length: int,
                 pad_ids: Mapping[str, Any], batch_size: int | None = None,
                 side: Side = "right") -> dict[str, Any]:
  """Stacks ragged examples into ``[B, length]`` int32 arrays.

  Args:
    examples: dicts of [L] arrays (tuples of them for several sharers), L <= length.
    length: padded length T.
    pad_ids: pad value per key, a tuple with one per sharer for tuple fields; missing
      keys (the masks) pad with 0.
    batch_size: rows B >= len(examples); extra rows are padding (default: as many
      as examples).
    side: ``"right"`` (training) or ``"left"`` (prompts for generation).

  Returns:
    The batch dict, the same keys as the examples.
  """
  batch_size = len(examples) if batch_size is None else batch_size
  if not examples or len(examples) > batch_size:
    raise ValueError(f"need 1..{batch_size} examples, got {len(examples)}")

  def stack(rows, pad, fixed=False):  # fixed: rows encoded at their final width
    return text.pad_rows(rows, len(rows[0]) if fixed else length, pad, batch=batch_size,
                         side=side)[0]

  batch = {}
  for key, first in examples[0].items():
    pad = pad_ids.get(key, 0)
    fixed = key.startswith("sharer_context")  # encoded at their final width
    if isinstance(first, tuple):
      pads = pad_ids[key] if key in pad_ids else (0,) * len(first)
      if not isinstance(pads, tuple) or len(pads) != len(first):
        raise TypeError(f"pad_ids[{key!r}] must be a tuple of {len(first)} pad ids, one per "
                        f"sharer, got {pads!r}")
      batch[key] = tuple(stack([e[key][j] for e in examples], pads[j], fixed)
                         for j in range(len(first)))
    else:
      batch[key] = stack([e[key] for e in examples], pad, fixed)
  return batch


@dataclasses.dataclass(frozen=True)
class PadBatch:
  """grain ``batch_fn``: pads to the smallest bucket length that fits the batch.

  Attributes:
    lengths: ascending bucket lengths; the last one is the longest an example can be.
    batch_size: rows per batch (short batches get empty rows).
    pad_ids: see :func:`pad_examples`.
    side: padding side.
  """
  lengths: tuple[int, ...]
  batch_size: int
  pad_ids: Mapping[str, Any]
  side: Side = "right"

  def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    longest = max(len(e["receiver_ids"]) for e in examples)
    length = next((n for n in self.lengths if n >= longest), None)
    if length is None:
      raise ValueError(f"example of length {longest} exceeds the buckets {self.lengths}")
    return pad_examples(examples, length=length, pad_ids=self.pad_ids,
                        batch_size=self.batch_size, side=self.side)


@dataclasses.dataclass(frozen=True)
class EncodeChat(grain.transforms.Map):
  """Record -> training example (None, later skipped, if it has no response tokens)."""
  encoder: chat.ChatEncoder
  drop_system: bool = True

  def map(self, element):
    messages = chat.to_messages(element, drop_system=self.drop_system)
    if not messages or messages[-1]["role"] != "assistant":
      return None
    if self.encoder.context_len:
      return self.encoder(messages, element.get("sharer_context"))
    return self.encoder(messages)


def _is_example(element) -> bool:
  return element is not None


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Input pipeline settings.

  Attributes:
    batch_size: per-host batch size.
    bucket_lengths: pad each batch to the smallest of these that fits (the encoder's
      ``max_len`` is always added); empty: always ``max_len``.
    seed: shuffle seed (each epoch reshuffles, derived from it).
    shuffle: shuffle records.
    num_epochs: passes over the data; None: repeat forever.
    drop_remainder: drop a short final batch (else fill it with empty rows).
    drop_system: drop system messages (as the C2C reference does for OpenHermes).
    shard_index: this host's shard; None: ``jax.process_index()``.
    shard_count: number of shards; None: ``jax.process_count()``.
    shard_block: consecutive records a host takes in turn (see :func:`shard_records`).
    even_shards: drop the last ``len % (shard_count * shard_block)`` records so hosts get
      equal shares.
    read_threads: threads that read and encode records.
    read_buffer_size: records encoded ahead per host.
    worker_count: > 0: batches are made in that many processes (``mp_prefetch``);
      each worker batches its own slice of the records, so the order differs from
      in-process (still fixed by the seed) and each drops its own remainder.
    prefetch_batches: batches prepared ahead in a thread (when worker_count == 0).
  """
  batch_size: int
  bucket_lengths: tuple[int, ...] = ()
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = 1
  drop_remainder: bool = True
  drop_system: bool = True
  shard_index: int | None = None
  shard_count: int | None = None
  shard_block: int = 1
  even_shards: bool = True
  read_threads: int = 4
  read_buffer_size: int = 64
  worker_count: int = 0
  prefetch_batches: int = 2


def host_shard(config: PipelineConfig) -> tuple[int, int]:
  """(shard index, shard count), defaulting to this JAX process."""
  index, count = config.shard_index, config.shard_count
  if index is None or count is None:
    import jax  # pylint: disable=import-outside-toplevel
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"shard_index {index} out of range for shard_count {count}")
  return index, count


class _BlockShard(grain.MapDataset):
  """Blocks ``index, index + count, ...`` of ``block`` consecutive parent records."""

  def __init__(self, parent: grain.MapDataset, index: int, count: int, block: int):
    super().__init__(parent)
    self._index, self._count, self._block = index, count, block
    groups, rest = divmod(len(parent), count * block)
    self._length = groups * block + min(max(rest - index * block, 0), block)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    epoch, i = divmod(i, self._length)
    group, offset = divmod(i, self._block)
    return self._parent[epoch * len(self._parent) + (group * self._count + self._index)
                        * self._block + offset]


def shard_records(ds: grain.MapDataset, index: int, count: int, even: bool = True,
                  block: int = 1) -> grain.MapDataset:
  """Host ``index`` of ``count``: blocks ``index, index + count, ...`` of ``block``
  consecutive records (``block=1``: every ``count``-th record from ``index``).

  Shards are disjoint and cover ``ds`` (less its last ``len % (count * block)`` records
  with ``even`` and several hosts); records ``[k * count * block, (k + 1) * count * block)`` are the k-th
  block of every host, in host order.
  """
  if block < 1:
    raise ValueError(f"shard block must be >= 1, got {block}")
  if count == 1:
    return ds
  if even and count > 1:
    ds = ds[:len(ds) - len(ds) % (count * block)]
  return ds[index::count] if block == 1 else _BlockShard(ds, index, count, block)


def _mark_flags_parsed() -> None:
  """grain 0.2.18 workers read an absl flag and fail unless flags were parsed
  (google/grain#1355, fixed later); scripts not run by ``absl.app`` get defaults."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_dataset(source, encoder: chat.ChatEncoder, config: PipelineConfig
                 ) -> grain.IterDataset:
  """The training input pipeline; ``iter()`` of it yields padded batch dicts.

  Args:
    source: random-access chat records (see :func:`c2cjax.data.sources.load_source`,
      :func:`~c2cjax.data.sources.split_source`, or a list of records).
    encoder: the receiver's :class:`c2cjax.data.chat.ChatEncoder` (with aligners).
    config: pipeline settings.
  """
  lengths = sorted({n for n in config.bucket_lengths if n < encoder.max_len} | {encoder.max_len})
  index, count = host_shard(config)
  ds = grain.MapDataset.source(source)
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  if config.num_epochs != 1:
    ds = ds.repeat(config.num_epochs)
  ds = shard_records(ds, index, count, config.even_shards, config.shard_block)
  ds = ds.map(EncodeChat(encoder, config.drop_system)).filter(_is_example)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.read_buffer_size))
  it = it.batch(config.batch_size, drop_remainder=config.drop_remainder,
                batch_fn=PadBatch(tuple(lengths), config.batch_size, encoder.pad_ids))
  if config.worker_count > 0:
    _mark_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
  elif config.prefetch_batches > 0:
    it = grain.experimental.ThreadPrefetchIterDataset(
        it, prefetch_buffer_size=config.prefetch_batches)
  return it
