"""eoq.training.grad_codes: weight gradients as int8 codes (the kernel and its torch reference)."""
import contextlib

import pytest
import torch

from eoq import kernels
from eoq.quant.quantizers import code_dtype
from eoq.training.grad_codes import pack_codes


@pytest.mark.parametrize("compiled", [True, False])
def test_packed_gradients_hand_worked(compiled):
    """pack_codes (the kernel and its torch reference): an SQ8 gradient as int8 codes with the
    largest in [64, 127]; values that are not 8-bit codes times a power of two (or not finite)
    stay float."""
    if compiled and kernels.load() is None:
        pytest.skip("no compiled kernels")
    with contextlib.nullcontext() if compiled else kernels.disabled():
        _packed_cases(pack_codes)


def _packed_cases(pack_codes):
    codes, lsb = pack_codes(torch.tensor([127.0, -3.0, 0.0]) * 2.0 ** -20)
    assert codes.dtype == torch.int8 and lsb == -20 and codes.tolist() == [127, -3, 0]
    codes, lsb = pack_codes(torch.tensor([6.0, -1.0]) * 2.0 ** -9)            # max 6: codes 96, -16
    assert lsb == -13 and codes.tolist() == [96, -16]
    assert pack_codes(torch.tensor([129.0, 1.0]))[0] is None                 # 9 bits
    assert pack_codes(torch.tensor([1.0, 0.3]))[0] is None                   # not on a grid
    assert pack_codes(torch.tensor([float("inf"), 1.0]))[0] is None


def test_code_dtype_is_the_narrowest_that_holds_the_codes():
    assert [code_dtype(b) for b in (2, 8, 9, 16, 17, 24)] == [torch.int8, torch.int8, torch.int16, torch.int16,
                                                                torch.int32, torch.int32]
