"""benchmarks/sampling_throughput.py: its step scaling, random parameters and CLI checks (the
measurement itself is a benchmark run, not a test)."""
import jax
import numpy as np
import pytest

from benchmarks import sampling_throughput as st


def test_nfe_scale_scales_the_paper_steps():
  assert st.scaled_steps(1000, 0.02) == 20  # a 1000-step sampler does 20 steps
  assert st.scaled_steps(18, 0.02) == 2  # never fewer than 2 (multistep samplers)
  assert st.scaled_steps(20, 1.0) == 20


def test_random_params_have_the_shapes_and_fan_in_scale():
  shapes = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((400, 300), np.float32),
                        "bias": jax.ShapeDtypeStruct((300,), np.float32)},
            "GroupNorm_0": {"scale": jax.ShapeDtypeStruct((300,), np.float32)}}
  p = st.random_params(shapes)
  assert p["Dense_0"]["kernel"].shape == (400, 300)
  assert abs(float(np.std(p["Dense_0"]["kernel"])) * np.sqrt(400) - 1.0) < 0.05
  assert float(np.abs(p["Dense_0"]["bias"]).max()) == 0.0
  assert float(np.min(p["GroupNorm_0"]["scale"])) == 1.0


@pytest.mark.parametrize("args", [["--nfe_scale", "0"], ["--nfe_scale", "1.5"],
                                  ["--nets", "unet9"], ["--dtypes", "float16"]])
def test_cli_refuses_bad_arguments(args, capsys):
  with pytest.raises(SystemExit):
    st.main(args)
  assert "error" in capsys.readouterr().err
