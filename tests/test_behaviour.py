"""20 EOQ training steps (simulator and integer engine) give the checkpoint tensors stored in
tests/reference/behaviour.json: moving code between modules did not change what is trained.

The hashes hold for the torch version and CPU instruction set they were made with; on another
machine the test is skipped (tests/reference/behaviour.py --write makes new ones from a commit
known to be right)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import behaviour  # noqa: E402

REFERENCE = json.loads(behaviour.REFERENCE.read_text())


@pytest.mark.skipif(REFERENCE["machine"] != behaviour.machine(),
                    reason="reference hashes made with another torch version or CPU instruction set")
def test_twenty_eoq_steps_match_the_stored_reference():
    assert behaviour.check() is None
