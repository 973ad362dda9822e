"""20 EOQ training steps (simulator and integer engine) give the checkpoint tensors stored in
tests/reference/behaviour.json: moving code between modules did not change what is trained.

The hashes hold for the torch version and CPU instruction set they were made with: there a
difference fails. On another machine the steps run too, and agree where torch's float32 kernels
round alike (an AMX Xeon matched a reference made on an AMD EPYC, its integer engine on AMX tiles
where the EPYC's ran VNNI instructions); a difference there is a skip that names it
(tests/reference/behaviour.py --write makes new hashes from a commit known to be right)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import behaviour  # noqa: E402

REFERENCE = json.loads(behaviour.REFERENCE.read_text())


def test_twenty_eoq_steps_match_the_stored_reference():
    diff = behaviour.check()
    if diff is not None and REFERENCE["machine"] != behaviour.machine():
        pytest.skip(f"reference hashes made with another torch version or CPU instruction set, and "
                    f"this machine's differ: {diff}")
    assert diff is None, diff
