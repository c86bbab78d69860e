"""Golden regression test: short driver runs of every training objective and variant, samplers'
outputs, reflow's pairs and every run's identity, against tests/data/golden/<case>.json.

Bit for bit on the platform the files were recorded on; across platforms (another jax, CPU,
XLA_FLAGS) to rtol 1e-4 on each float leaf's sum / sum |x| / L2 norm, with the largest relative
difference reported. See tests/golden.py (re-record: ``python -m tests.golden --record``).
"""
import copy
import warnings

import pytest

from tests import golden


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The trained workdirs, shared by every case of this module (teachers trained once)."""
  return golden.Runs(str(tmp_path_factory.mktemp("golden")))


def _params():
  return [pytest.param(c.name, marks=[pytest.mark.slow] if c.slow else [], id=c.name)
          for c in golden.CASES]


@pytest.mark.parametrize("name", _params())
def test_golden(name, runs):
  recorded = golden.read_golden(name)
  if recorded is None:
    pytest.fail(f"no golden file {golden.golden_path(name)}; record it with "
                f"`python -m tests.golden --record --cases {name}`")
  got = golden.compute(golden.CASE_BY_NAME[name], runs)
  cmp = golden.compare(recorded, got)
  print(cmp.summary())
  if not cmp.bitwise and cmp.ok:  # shown in pytest's warnings summary: the size of the change
    warnings.warn(cmp.summary(), UserWarning)
  assert cmp.ok, cmp.summary()


def test_every_objective_sampler_and_golden_file_has_a_case():
  """Each training objective and each registered sampler of the driver is recorded by some case,
  and every golden file belongs to a case (a renamed case leaves no stale file behind)."""
  import os
  seen = set()
  for c in golden.CASES:
    rec = golden.read_golden(c.name)
    for ident in (rec or {}).get("identity", {}).values():
      seen.add(ident["training"].get("objective", "dsm"))  # 'dsm' is left out of identities
  assert set(golden.driver_objectives()) <= seen, sorted(set(golden.driver_objectives()) - seen)
  sampled = {c.name[len("sample_vp_"):] for c in golden.CASES if c.name.startswith("sample_vp_")}
  sampled.add("consistency")  # sample_cd_consistency, sample_ct_consistency
  sampled.add("flow_map")  # sample_meanflow_flow_map
  missing = sorted(set(golden.driver_samplers()) - sampled)
  assert not missing, f"registered samplers without a sample_vp_<name> case: {missing}"
  files = {n[:-len(".json")] for n in os.listdir(golden.GOLDEN_DIR) if n.endswith(".json")}
  assert files <= set(golden.CASE_BY_NAME), sorted(files - set(golden.CASE_BY_NAME))


# -- the comparison itself (no JAX runs) ----------------------------------------------------------


def _record(**arrays):
  import numpy as np
  return {"case": "toy", "what": "", "platform": {"jax": "1.0", "cpu": "x"},
          "identity": {"run": {"training": {"num_steps": 30}, "resolved": {"jax_version": "1.0"}}},
          "info": {}, "arrays": {k: golden.leaf_record(np.asarray(v)) for k, v in arrays.items()}}


def test_compare_is_bitwise_on_the_recorded_platform():
  import numpy as np
  a = _record(w=np.float32([1.0, 2.0]), step=np.int32(30))
  assert golden.compare(a, copy.deepcopy(a)).ok
  b = _record(w=np.float32([1.0, 2.0 + 2e-7]), step=np.int32(30))
  cmp = golden.compare(a, b)
  assert not cmp.ok and cmp.bitwise and "w: sha256 differs (bitwise)" in cmp.summary()
  assert "golden case 'toy'" in cmp.summary()


def test_compare_across_platforms_uses_rtol_and_reports_the_largest_difference():
  import numpy as np
  a = _record(w=np.float32([1.0, 2.0]), step=np.int32(30))
  b = _record(w=np.float32([1.0, 2.00001]), step=np.int32(30))
  b["platform"] = {"jax": "2.0", "cpu": "x"}
  b["identity"]["run"]["resolved"]["jax_version"] = "2.0"  # ignored: the jax version differs
  cmp = golden.compare(a, b)
  assert cmp.ok and not cmp.bitwise and cmp.max_rel_leaf == "w"
  assert 1e-6 < cmp.max_rel < 1e-5 and "platform differs: jax '1.0' -> '2.0'" in cmp.summary()
  c = _record(w=np.float32([1.0, 2.01]), step=np.int32(30))
  c["platform"] = b["platform"]
  assert "w: relative difference" in golden.compare(a, c).summary()
  d = _record(w=np.float32([1.0, 2.0]), step=np.int32(31))  # integers: exact everywhere
  d["platform"] = b["platform"]
  assert "step: sha256 differs (integer leaf)" in golden.compare(a, d).summary()


def test_compare_checks_identity_and_structure():
  import numpy as np
  a = _record(w=np.float32([1.0, 2.0]))
  b = copy.deepcopy(a)
  b["identity"]["run"]["training"]["num_steps"] = 31
  assert "identity[run].training.num_steps: recorded 30, now 31" in golden.compare(a, b).summary()
  b = copy.deepcopy(a)
  b["identity"]["run"]["resolved"]["jax_version"] = "2.0"  # same jax in the platform: compared
  assert not golden.compare(a, b).ok
  c = _record(v=np.float32([1.0, 2.0]))
  s = golden.compare(a, c).summary()
  assert "w: recorded leaf is missing now" in s and "v: new leaf" in s
  e = _record(w=np.float64([1.0, 2.0]))
  assert "w: recorded float32[2], now float64[2]" in golden.compare(a, e).summary()
