"""Would grain (pinned 0.2.18) keep our batches? A prototype, its bit-identity checks and its
throughput against today's pipeline (diffusion/data/images.py, latents.py). Not wired anywhere.

The prototype keeps our batch function and lets grain schedule it: the elements are the steps,

  grain.MapDataset.range(start, stop).map(StepBatch(make))        # step -> it.batch(step)
      .to_iter_dataset(grain.ReadOptions(num_threads=T, prefetch_buffer_size=Q))
      [.mp_prefetch(grain.MultiprocessingOptions(num_workers=W, per_worker_buffer_size=Q))]

``StepBatch`` holds a picklable ``make`` (a ``functools.partial`` of ``make_image_dataset`` or of
:func:`make_latent_iterator`) and builds the iterator lazily in whichever process calls it (the
pattern of ``images._process_batch``), so batch i is still ``ImageIterator.batch(i)``: grain only
decides where and when it is computed. Also checked: ``grain.DataLoader`` over a data source whose
record i is batch i (``IndexSampler(shuffle=False)``, 2 worker processes).

``--check`` (default on) compares every grain batch byte for byte with ``it.batch(step)`` computed
synchronously, for digits (embedded), the folder source on generated JPEGs
(benchmarks/folder_pipeline.write_jpegs) and a latent folder (tests/test_latent_data.write_folder),
and resumes: grain started at step k, and grain's own ``get_state`` / ``set_state`` mid-stream
(thread and process iterators, and the DataLoader's). ``--bench`` times, ``--reps`` times
interleaved, today's synchronous / 2 threads / 2 processes against grain synchronous / 2 threads /
mp_prefetch with 2 processes, on the folder source (ADM crop to ``--size``, batch 25, flips) and
digits (batch 128, decoded cache: today's 'process' workers then run as threads); it reports batches/s (median and range) and the seconds to the
first batch (process start-up included).

  PYTHONPATH=$PWD python benchmarks/grain_pipeline.py --check --bench --reps 3
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grain  # noqa: E402
import numpy as np  # noqa: E402

from diffusion import latent as latent_lib  # noqa: E402
from diffusion.data import images, latents  # noqa: E402

ENDLESS = 1 << 40  # the stop of an endless stream's step range


# ----------------------------------------------------------------------------- the prototype


class StepBatch:
  """step -> ``make().batch(step)``; picklable (the iterator is rebuilt in each process that
  calls it, never pickled open). ``make``: a picklable zero-argument callable returning an
  object with ``batch(step)`` (an ``ImageIterator`` made with ``workers=0``, a LatentIterator)."""

  def __init__(self, make: Callable[[], Any]):
    self.make = make
    self._it = None

  def __getstate__(self):
    return {"make": self.make, "_it": None}

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._it = self.make()
    return self._it.batch(int(step))


def grain_dataset(make: Callable[[], Any], start: int = 0, stop: int = ENDLESS, *,
                  threads: int = 0, processes: int = 0, buffer: int = 2) -> grain.IterDataset:
  """Batches start, start + 1, ... of ``make()`` as a grain IterDataset: ``threads`` prefetch
  threads (0: computed by ``next``) buffering ``threads * buffer`` batches; with ``processes``,
  grain's ``mp_prefetch`` (spawned workers, worker w computing steps start + w, start + w + W,
  ..., interleaved back in order), each computing its batches on its own thread."""
  ds = grain.MapDataset.range(start, stop).map(StepBatch(make))
  if processes:
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  else:
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads * buffer)
  out = ds.to_iter_dataset(read)
  if processes:
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes,
                                                       per_worker_buffer_size=buffer))
  return out


class StepSource:
  """A grain RandomAccessDataSource whose record i is ``make().batch(i)`` (for DataLoader)."""

  def __init__(self, make: Callable[[], Any], length: int):
    self.batch, self.length = StepBatch(make), length

  def __len__(self) -> int:
    return self.length

  def __repr__(self) -> str:  # DataLoader.set_state checks the source by its repr
    return f"StepSource({self.batch.make!r}, {self.length})"

  def __getitem__(self, step: int) -> Dict[str, np.ndarray]:
    return self.batch(step)


def grain_loader(make: Callable[[], Any], length: int, workers: int = 2) -> grain.DataLoader:
  return grain.DataLoader(
      data_source=StepSource(make, length),
      sampler=grain.samplers.IndexSampler(num_records=length, shuffle=False, num_epochs=1),
      worker_count=workers, worker_buffer_size=2)


# ----------------------------------------------------------------------------- sources


def make_latent_iterator(folder: str, batch_size: int, seed: int) -> latents.LatentIterator:
  ds = latents.LatentDataset(folder)
  norm = latent_lib.scale_norm(0.5, ds.latent_shape[-1])
  return latents.LatentIterator(ds, norm, posterior="sample", batch_size=batch_size, seed=seed)


def makers(tmp: str, jpegs: int, size: int) -> Dict[str, Callable[[], Any]]:
  """name -> picklable maker of a synchronous iterator, writing the test data under ``tmp``."""
  from benchmarks.folder_pipeline import write_jpegs
  from tests.test_latent_data import write_folder
  root = os.path.join(tmp, "jpeg")
  if not os.path.isdir(os.path.join(root, "train")):
    write_jpegs(root, jpegs)
  lat = os.path.join(tmp, "latents")
  if not os.path.isdir(lat):
    write_folder(lat, n=37, shard_size=8, seed=1)
  return {
      "digits": functools.partial(images.make_image_dataset, "digits", "train", batch_size=128,
                                  seed=3, random_flip=False),
      "folder": functools.partial(images.make_image_dataset, "folder", "train", batch_size=25,
                                  seed=3, data_dir=root, image_size=size, random_flip=True,
                                  cache_decoded=False),
      "latents": functools.partial(make_latent_iterator, lat, 8, 3),
  }


# ----------------------------------------------------------------------------- checks


def same(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
  return (sorted(a) == sorted(b)
          and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                  and a[k].tobytes() == b[k].tobytes() for k in a))


def take(it, n: int) -> List[Dict[str, np.ndarray]]:
  return [next(it) for _ in range(n)]


def check(make: Callable[[], Any], name: str, n: int = 8, k: int = 5) -> List[str]:
  """Bit-identity of the grain variants with ``batch(step)``; returns the failures."""
  ref_it = make()
  ref = [ref_it.batch(s) for s in range(k + n)]
  fails = []

  def expect(label: str, got: List[Dict[str, np.ndarray]], first: int) -> None:
    ok = all(same(g, ref[first + i]) for i, g in enumerate(got))
    print(f"  {name:8s} {label:52s} {'identical' if ok else 'DIFFERENT'}", flush=True)
    if not ok:
      fails.append(f"{name}: {label}")

  for label, kw in [("sync", {}), ("2 threads", dict(threads=2)),
                    ("mp_prefetch 2 processes", dict(processes=2))]:
    it = iter(grain_dataset(make, **kw))
    expect(f"{label}: steps 0..{k + n - 1}", take(it, k + n), 0)
    it.close() if hasattr(it, "close") else None
    it = iter(grain_dataset(make, start=k, **kw))
    expect(f"{label}: started at step {k}", take(it, n), k)
    it.close() if hasattr(it, "close") else None
    # grain's own checkpoint: state after k batches, restored into a fresh iterator
    it = iter(grain_dataset(make, **kw))
    take(it, k)
    state = it.get_state()
    it.close() if hasattr(it, "close") else None
    it2 = iter(grain_dataset(make, **kw))
    it2.set_state(state)
    print(f"  {name:8s} {label}: state after {k} batches: {str(state)[:150]}")
    expect(f"{label}: set_state(get_state() after {k})", take(it2, n), k)
    it2.close() if hasattr(it2, "close") else None
  loader = grain_loader(make, k + n)
  it = iter(loader)
  take(it, k)
  state = it.get_state()
  print(f"  {name:8s} DataLoader: state after {k} batches: {state!r}"[:240])
  it2 = iter(grain_loader(make, k + n))
  it2.set_state(state)
  expect(f"DataLoader 2 workers: set_state after {k}", take(it2, n), k)
  expect("DataLoader 2 workers: all", list(iter(grain_loader(make, k + n))), 0)
  return fails


# ----------------------------------------------------------------------------- throughput


def rate(it, steps: int) -> tuple:
  """(seconds to the first batch, batches/s over ``steps`` more)."""
  t0 = time.perf_counter()
  next(it)
  first = time.perf_counter() - t0
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  return first, steps / (time.perf_counter() - t)


def variants(make) -> Dict[str, Callable[[], Any]]:
  """name -> a zero-argument opener of an iterator (with ``close``)."""
  today = lambda **kw: functools.partial(make, **kw)()  # noqa: E731
  return {
      "today sync": lambda: today(),
      "today 2 threads": lambda: today(workers=2),
      "today 2 processes": lambda: today(workers=2, worker_type="process"),
      "grain sync": lambda: iter(grain_dataset(make)),
      "grain 2 threads": lambda: iter(grain_dataset(make, threads=2)),
      "grain mp_prefetch 2": lambda: iter(grain_dataset(make, processes=2)),
  }


def bench(mk: Dict[str, Callable[[], Any]], reps: int, steps: Dict[str, int]) -> Dict[str, Any]:
  results: Dict[str, Dict[str, List[tuple]]] = {}
  for rep in range(reps):
    for name in steps:
      for label, open_it in variants(mk[name]).items():
        it = open_it()
        try:
          first, r = rate(it, steps[name])
        finally:
          it.close()
        results.setdefault(name, {}).setdefault(label, []).append((first, r))
        print(f"  rep {rep} {name:7s} {label:22s} first {first:5.2f} s  {r:7.2f} batches/s  "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
  return results


def table(results, batch: Dict[str, int]) -> str:
  lines = []
  for name, rows in results.items():
    lines += [f"\n{name} (batch {batch[name]})\n",
              "| pipeline | batches/s median [min, max] | images/s median | first batch s "
              "median [min, max] |", "|---|---|---|---|"]
    for label, runs in rows.items():
      f = np.array([r[0] for r in runs])
      r = np.array([r[1] for r in runs])
      lines.append(f"| {label} | {np.median(r):.2f} [{r.min():.2f}, {r.max():.2f}] | "
                   f"{np.median(r) * batch[name]:.0f} | {np.median(f):.2f} [{f.min():.2f}, "
                   f"{f.max():.2f}] |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=False)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--jpegs", type=int, default=200)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--folder_steps", type=int, default=16)
  parser.add_argument("--digits_steps", type=int, default=200)
  parser.add_argument("--sources", default="folder,digits", help="what --bench times")
  parser.add_argument("--tmp", default=None, help="where the test data go (kept if given)")
  args = parser.parse_args()
  # mp_prefetch reads grain's absl flags: parsed by absl.app in experiments/main.py, here by hand
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  print(f"grain {grain.__version__}, numpy {np.__version__}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    mk = makers(args.tmp or tmp, args.jpegs, args.size)
    if args.check:
      fails = []
      for name, make in mk.items():
        fails += check(make, name)
      print("bit-identity:", "all identical" if not fails else f"FAILED {fails}", flush=True)
    if args.bench:
      steps = {"folder": args.folder_steps, "digits": args.digits_steps}
      results = bench(mk, args.reps, {s: steps[s] for s in args.sources.split(",")})
      print(table(results, {"folder": 25, "digits": 128}))


if __name__ == "__main__":
  main()
