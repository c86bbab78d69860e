"""Device mesh, shardings and sharded jit for training and sampling (no pmap).

One ``jax.sharding.Mesh`` with axes ``('data', 'model')`` spans all devices of all processes. The
batch is split over 'data'; the train state is replicated, or, with ``fsdp=True``, each parameter
(and its EMA and optimizer moments) is split over 'model' along its largest divisible axis.
Everything is compiled with ``jax.jit`` and explicit in/out shardings, so the same code runs on
one CPU device, several simulated CPU devices, one GPU, or a multi-host TPU slice.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
DATA, MODEL = "data", "model"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """``jax.distributed.initialize`` for multi-host runs; None arguments are auto-detected
  (TPU pods, SLURM, Open MPI). Must run before any other jax call."""
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address,
                                  num_processes=num_processes, process_id=process_id).items()
            if v is not None}
  # Cross-process collectives on CPU (tests, CPU clusters) need gloo; GPU/TPU ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def make_mesh(model_axis: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (num_devices // model_axis, model_axis) mesh with axes ('data', 'model')."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model_axis < 1 or n % model_axis:
    raise ValueError(f"model_axis must be a positive divisor of the device count {n}, "
                     f"got {model_axis}")
  grid = np.asarray(devices, dtype=object).reshape(n // model_axis, model_axis)
  return Mesh(grid, (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh (data and model axes: with FSDP
  the model axis also takes its share of the batch)."""
  return NamedSharding(mesh, P((DATA, MODEL)))


def _fsdp_spec(shape: Sequence[int], n: int, min_size: int) -> P:
  """Splits the largest axis divisible by n; small or indivisible arrays stay replicated."""
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = MODEL
      return P(*spec)
  return P()


def state_sharding(mesh: Mesh, state: PyTree, fsdp: bool = False,
                   min_size: int = 2**14) -> PyTree:
  """Shardings for every leaf of ``state`` (arrays or ShapeDtypeStructs): replicated, or FSDP
  over the 'model' axis for leaves with at least ``min_size`` elements."""
  n = mesh.shape[MODEL]

  def one(leaf):
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, _fsdp_spec(np.shape(leaf), n, min_size))

  return jax.tree_util.tree_map(one, state)


def global_batch(local: PyTree, sharding: NamedSharding) -> PyTree:
  """Assembles each process's rows (b_local, ...) into global arrays (b_local * P, ...)."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def put(tree: PyTree, shardings: PyTree) -> PyTree:
  """Places a host or device pytree with the given shardings (a pytree prefix of ``tree``)."""
  return jax.device_put(tree, shardings)


def jit_sharded(fn: Callable, in_shardings, out_shardings, donate_argnums=(),
                static_argnums=()) -> Callable:
  """``jax.jit`` with explicit shardings and donated buffers."""
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=donate_argnums, static_argnums=static_argnums)


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of a tree's leaves on every process: fully addressable (or replicated) arrays
  copied to the host, arrays sharded over several processes gathered (every process must call
  it then); numpy values and Python scalars as np.asarray makes them."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree_util.tree_map(one, tree)


def sampling_streams(key: jax.Array):
  """(prior_key, noise_key) = jax.random.split(key): x_T of sample i comes from
  fold_in(prior_key, i), the sampler's noise of sample i from fold_in(noise_key, i), two
  independent streams that depend only on (key, i)."""
  prior_key, noise_key = jax.random.split(key)
  return prior_key, noise_key


def per_sample_prior(schedule, key: jax.Array, start: int, n: int,
                     shape: Sequence[int]) -> jax.Array:
  """x_T for samples start..start+n-1: sample i is drawn from fold_in(key, i), so it does not
  depend on the batch size or the number of devices. Returns (n, *shape)."""
  idx = start + jnp.arange(n)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
  return jax.vmap(lambda k: schedule.prior_sample(k, tuple(shape)))(keys)


def batch_sampler(sample_fn: Callable, params: PyTree, key: jax.Array, schedule,
                  shape: Sequence[int], batch_size: int, mesh: Mesh):
  """One compiled batch of ``sample_fn(params, key, x_T, offset) -> (x0, info)`` over the mesh.

  Returns (bs, draw): ``draw(start) -> (x0 (bs, *shape) numpy, info)`` gives samples
  start .. start + bs - 1. ``key`` is split by ``sampling_streams`` into a prior key and a noise
  key: x_T is drawn inside the jitted function, sample i from fold_in(prior_key, i)
  (``per_sample_prior``), already sharded over the batch axis, and ``sample_fn`` gets the noise
  key and ``offset = start`` (an int32 scalar: the global index of the batch's first sample) for
  samplers that draw per-sample noise from fold_in(noise_key, index). bs is ``batch_size``
  rounded up to a multiple of the device count; every call has that shape (one compile), and
  sample i does not depend on bs, the device count or the process count (up to float
  reassociation across compiled shapes).
  """
  ndev = mesh.devices.size
  bs = max(ndev, (batch_size + ndev - 1) // ndev * ndev)
  bsh, rep = batch_sharding(mesh), replicated(mesh)

  def run(p, k, offset):
    prior_key, noise_key = sampling_streams(k)
    x_t = per_sample_prior(schedule, prior_key, offset, bs, shape)
    x_t = jax.lax.with_sharding_constraint(x_t, bsh)
    return sample_fn(p, noise_key, x_t, offset)

  jitted = jax.jit(run, in_shardings=(rep, rep, rep), out_shardings=(bsh, rep))
  params = jax.device_put(params, rep)
  key = jax.device_put(np.asarray(key), rep)  # host value: valid on every process

  def draw(start: int):
    x0, info = jitted(params, key, jax.device_put(np.int32(start), rep))
    return to_host(x0), info

  return bs, draw


def sample_sharded(sample_fn: Callable, params: PyTree, key: jax.Array, schedule,
                   num_samples: int, shape: Sequence[int], batch_size: int, mesh: Mesh,
                   progress: Optional[Callable[[int], None]] = None, start: int = 0):
  """Runs ``sample_fn(params, key, x_T, offset) -> (x0, info)`` over the mesh in batches.

  Samples start .. start + num_samples - 1 of the sequence defined by ``key``
  (``batch_sampler``: x_T of sample i from fold_in(prior_key, i), the sampler's noise from the
  noise key and the sample's index). Every batch has the same size, a multiple of the device
  count (one compile), so results do not depend on the device or process count, and [0, n)
  equals [0, m) + [m, n). Returns (samples (num_samples, *shape) numpy, last info).
  ``progress(done)``, if given, is called after each batch with the number of samples done (of
  this call).
  """
  bs, draw = batch_sampler(sample_fn, params, key, schedule, shape,
                           min(batch_size, num_samples), mesh)
  xs, info = [], {}
  for first in range(start, start + num_samples, bs):
    n = min(bs, start + num_samples - first)
    x0, info = draw(first)
    xs.append(x0[:n])
    if progress is not None:
      progress(first - start + n)
  return np.concatenate(xs, axis=0), info


def process_count() -> int:
  return jax.process_count()


class StopAgreement:
  """The all-reduce (max) of one int32 per process over all devices, pipelined by one step
  boundary: ``poll(step, flag, final)`` dispatches this boundary's reduction and returns the
  previous one's (``final``: this one's, blocking), so the host never waits on the step it just
  dispatched. Once a non-zero value is agreed, the answer stays (experiments.signals: every
  process stops at the same step)."""

  def __init__(self):
    mesh = Mesh(np.array(jax.devices()), ("all",))
    self._n = mesh.devices.size
    self._sharding = NamedSharding(mesh, P("all"))
    self._devices = sorted(self._sharding.addressable_devices, key=lambda d: d.id)
    self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
    self._pending = None  # the all-reduce dispatched at the previous boundary, not yet read
    self._step: Optional[int] = None
    self._value = 0

  def _dispatch(self, flag: int):
    shards = [jax.device_put(np.full((1,), flag, np.int32), d) for d in self._devices]
    return self._max(jax.make_array_from_single_device_arrays((self._n,), self._sharding, shards))

  @staticmethod
  def _read(arr) -> int:
    return int(np.asarray(arr.addressable_data(0)))

  def poll(self, step: int, flag: int, final: bool) -> int:
    if step == self._step and not final:
      return self._value
    new = self._dispatch(flag)
    value = self._read(self._pending) if self._pending is not None else 0
    if final:
      value, self._pending = max(value, self._read(new)), None
    else:
      self._pending = new
    self._step, self._value = step, max(self._value, value)
    return self._value
