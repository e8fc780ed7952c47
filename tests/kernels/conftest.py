import pytest
import torch

from benchmarks.common import rel_rmse


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float = 1e-4):
    """One comparison for every kernel output and gradient: shapes equal, no NaN, and the
    relative RMSE of `out` against `ref` at most `ratio`."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN in output (unwritten memory?)"
    err = rel_rmse(ref, out)
    assert err <= ratio, f"{name}: relative RMSE {err:.3e} > {ratio:.1e}"


@pytest.fixture(name="assert_close")
def assert_close_fixture():
    return assert_close
