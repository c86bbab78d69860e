"""Throughput (images/s) of the image input pipeline alone: decoded cache, prefetch workers.

``make_image_dataset("cifar10", "train", batch_size=128, random_flip=True, workers=W,
worker_type=T, cache_decoded=C)`` (the training pipeline of diffusion/data/images.py: shuffled
indices, per-example reads, uniform dequantization, flips; W threads or spawned processes
computing whole batches ahead, ``prefetch`` per worker; with the cache, the split decoded once
into memory and each batch gathered from it) is drained as fast as possible for W in 0
(synchronous) / 1 / 2, T in thread / process (uncached only: a cached split prefetches on
threads), C off / on, on two offline cifar10-shaped sources (no dataset download, no TensorFlow):

* ``png``: N synthetic 32x32x3 images PNG-encoded once with PIL (kept in a temporary file that
  each worker process reloads); each read decodes one with PIL, as ``tfds.data_source`` does
  for cifar10's array_record records without OpenCV (the array_record file read itself is not
  included);
* ``mock``: ``tfds.testing.mock_data`` (the tests' source): each read draws a random uint8
  image with numpy (threads only: the mock lives in this process).

The decoding of the cache happens in the first (warm-up) batch; its time is a column.
Writes ``benchmarks/results/input_pipeline_<platform>.md`` (platform of jax.devices()[0]).
With ``--step_images_per_s`` (a train step's measured images/s, e.g. the DDPM CIFAR-10 U-Net's)
it adds the ratio pipeline / step (above 1: the pipeline alone is faster than that step) and a
second drain in which the consumer waits ``batch / step_images_per_s`` seconds per batch
without holding the GIL (``time.sleep``: a stand-in for waiting on the device) -- the images/s
of pipeline + simulated step, which prefetch should bring from ``1 / (1/p + 1/s)``
(synchronous) towards ``min(p, s)``.

  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --step_images_per_s 10000 --seconds 5
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import pickle
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from diffusion.data import images  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPE = (32, 32, 3)
DEFAULTS = dict(workers=[0, 1, 2], worker_types=["thread", "process"], cache=["off", "on"],
                sources=["png", "mock"], batch=128, seconds=3.0, num_examples=10_000,
                prefetch=2)


class PngSource:
  """Cifar10-shaped records ``(png bytes, label)``: PNG decoded by PIL on every read."""

  def __init__(self, records: List[Tuple[bytes, int]]):
    self._records = records

  @classmethod
  def encode(cls, num_examples: int, seed: int = 0) -> "PngSource":
    """``num_examples`` smooth random images (a coarse 8x8 grid upsampled, plus noise: PNG
    sizes like photos'), PNG-encoded."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (num_examples, 8, 8, 3)).repeat(4, 1).repeat(4, 2)
    noise = rng.integers(-8, 9, (num_examples,) + SHAPE)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, num_examples)
    records = []
    for img, label in zip(pixels, labels):
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG")
      records.append((buf.getvalue(), int(label)))
    return cls(records)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> Dict[str, Any]:
    from PIL import Image
    data, label = self._records[int(i)]
    with Image.open(io.BytesIO(data)) as im:
      return {"image": np.asarray(im.convert("RGB")), "label": label}


def load_png_source(path: str) -> PngSource:
  """The PngSource pickled at ``path`` (a picklable source factory for worker processes)."""
  with open(path, "rb") as f:
    return PngSource(pickle.load(f))


def drain(it, seconds: float, step_s: float = 0.0, min_batches: int = 5) -> Dict[str, float]:
  """Pulls batches from ``it`` for about ``seconds`` after one warm-up batch (which starts the
  prefetch threads), sleeping ``step_s`` after each (a simulated train step); images/s over
  the timed batches."""
  next(it)
  n, k, t0 = 0, 0, time.perf_counter()
  while k < min_batches or time.perf_counter() - t0 < seconds:
    b = next(it)
    n, k = n + len(b["label"]), k + 1
    if step_s:
      time.sleep(step_s)
  dt = time.perf_counter() - t0
  return {"images": n, "seconds": dt, "images_per_s": n / dt}


def configurations(source: str, args) -> List[Tuple[str, str, int]]:
  """(cache, worker type, workers) of the rows of ``source``: synchronous (W = 0) once per
  cache setting; processes only uncached and for the png source."""
  out = []
  for cache in args.cache:
    for wt in args.worker_types:
      for w in args.workers:
        if w == 0 and wt != args.worker_types[0]:
          continue
        if wt == "process" and (cache == "on" or source != "png"):
          continue
        out.append((cache, wt if w else "-", w))
  return out


def bench_source(source: str, args) -> List[Dict[str, Any]]:
  """The rows of one source: images/s for each (cache, worker type, workers)."""
  import contextlib

  import tensorflow_datasets as tfds
  factory = None
  if source == "png":
    t0 = time.perf_counter()
    src = PngSource.encode(args.num_examples)
    path = os.path.join(tempfile.mkdtemp(prefix="input_pipeline_"), "png.pkl")
    with open(path, "wb") as f:
      pickle.dump(src._records, f)
    factory = functools.partial(load_png_source, path)
    print(f"png: encoded {len(src)} images in {time.perf_counter() - t0:.1f} s", flush=True)
    ctx = contextlib.nullcontext()
  else:
    ctx = tfds.testing.mock_data(num_examples=args.num_examples)
  rows = []
  with ctx:
    for cache, wt, w in configurations(source, args):
      make = functools.partial(
          images.make_image_dataset, "cifar10", "train", batch_size=args.batch, seed=0,
          random_flip=True, workers=w, prefetch=args.prefetch,
          worker_type="thread" if wt == "-" else wt, cache_decoded=cache == "on",
          source_factory=factory)
      with make() as it:
        assert it.image_shape == SHAPE
        r = drain(it, args.seconds)
        r.update(source=source, cache=cache, worker_type=wt, workers=w,
                 decode_s=it.cache_seconds)
      name = f"{source}: cache {cache}, {wt} workers {w}"
      print(f"{name}: {r['images_per_s']:,.0f} images/s", flush=True)
      if args.step_images_per_s:
        with make() as it:
          r["with_step"] = drain(it, args.seconds, args.batch / args.step_images_per_s)[
              "images_per_s"]
        print(f"{name} + simulated step: {r['with_step']:,.0f} images/s", flush=True)
      rows.append(r)
  return rows


def table(rows: List[Dict[str, Any]], step_ips: Optional[float]) -> List[str]:
  head = ("| source | cache | worker type | workers | images/s | vs uncached synchronous "
          "| cache decode, s |")
  sep = "|---|---|---|---:|---:|---:|---:|"
  if step_ips:
    head += " pipeline / train step | pipeline + simulated step, images/s |"
    sep += "---:|---:|"
  lines = [head, sep]
  base = {r["source"]: r["images_per_s"] for r in rows
          if r["workers"] == 0 and r["cache"] == "off"}
  for r in rows:
    speed = (f"{r['images_per_s'] / base[r['source']]:.2f}x" if r["source"] in base else "-")
    decode = f"{r['decode_s']:.1f}" if r["decode_s"] is not None else "-"
    line = (f"| {r['source']} | {r['cache']} | {r['worker_type']} | {r['workers']} | "
            f"{r['images_per_s']:,.0f} | {speed} | {decode} |")
    if step_ips:
      line += f" {r['images_per_s'] / step_ips:.2f} | {r['with_step']:,.0f} |"
    lines.append(line)
  return lines


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workers", type=int, nargs="+", default=DEFAULTS["workers"])
  p.add_argument("--worker_types", nargs="+", default=DEFAULTS["worker_types"],
                 choices=["thread", "process"])
  p.add_argument("--cache", nargs="+", default=DEFAULTS["cache"], choices=["off", "on"],
                 help="decoded in-memory cache (cache_decoded False / True)")
  p.add_argument("--sources", nargs="+", default=DEFAULTS["sources"], choices=["png", "mock"])
  p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
  p.add_argument("--prefetch", type=int, default=DEFAULTS["prefetch"],
                 help="batches ahead per worker")
  p.add_argument("--seconds", type=float, default=DEFAULTS["seconds"],
                 help="timed seconds per (source, workers)")
  p.add_argument("--num_examples", type=int, default=DEFAULTS["num_examples"])
  p.add_argument("--step_images_per_s", type=float, default=None,
                 help="a train step's images/s (e.g. the DDPM CIFAR-10 U-Net's), for the ratio")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if any(w < 0 for w in args.workers) or args.prefetch < 1 or args.batch < 1:
    p.error(f"need workers >= 0, prefetch >= 1, batch >= 1; got workers={args.workers}, "
            f"prefetch={args.prefetch}, batch={args.batch}")
  import jax
  platform = jax.devices()[0].platform
  load0, t_start = os.getloadavg(), time.time()
  rows = [r for s in args.sources for r in bench_source(s, args)]
  load1 = os.getloadavg()
  flags = []
  for k, v in DEFAULTS.items():
    got = getattr(args, k)
    if got != v:
      flags.append(f"--{k} {' '.join(map(str, got)) if isinstance(got, list) else got}")
  if args.step_images_per_s:
    flags.append(f"--step_images_per_s {args.step_images_per_s:g}")
  cmd = " ".join(["python benchmarks/input_pipeline.py"] + flags)
  lines = [
      f"# Image input pipeline throughput ({platform} host)", "",
      f"Measured by `{cmd}` ({os.cpu_count()} CPU cores; numpy {np.__version__}). "
      f"`make_image_dataset('cifar10', 'train', batch_size={args.batch}, random_flip=True, "
      f"workers=W, prefetch={args.prefetch}, "
      f"worker_type=T, cache_decoded=C)` drained as fast as possible for "
      f"{args.seconds:g} s after one warm-up batch, on {args.num_examples:,} offline "
      f"cifar10-shaped examples; sources in the docstring of benchmarks/input_pipeline.py "
      f"(`png`: PIL PNG decode per read as tfds does; `mock`: tfds.testing.mock_data).", "",
      f"Host load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on "
      f"{os.cpu_count()} cores (a shared host: lower bounds). Wall time "
      f"{time.time() - t_start:.0f} s.", "",
  ] + table(rows, args.step_images_per_s)
  if args.step_images_per_s:
    s_ips = args.step_images_per_s
    lines += ["", f"Train step: {s_ips:g} images/s (given). A ratio above 1: the pipeline alone "
              "is faster than the step. The last column drains the pipeline with a simulated "
              f"step (sleep {args.batch / s_ips * 1e3:.1f} ms per batch, GIL released): "
              f"{s_ips:g} images/s there means the pipeline is fully hidden behind the step."]
  else:
    lines += ["", "No train-step throughput given: pass `--step_images_per_s` (the DDPM "
              "CIFAR-10 U-Net step's images/s on the training device) for the ratio."]
  md = "\n".join(lines) + "\n"
  out = args.out or os.path.join(RESULTS, f"input_pipeline_{platform}.md")
  from train_throughput import write_table  # this script's folder is on sys.path
  write_table(md, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
