"""The verdict rules on hand-made numbers: each claim reproduced, not reproduced and not measured."""
import math

from analysis import verdicts as v


def test_accuracy_within_the_margin_of_fixup_and_not_below_wageubn():
    assert v.accuracy([("resnet20", 85.60, 86.27, None)]) == "reproduced (resnet20: EOQ -0.67 against fp32+Fixup)"
    assert v.accuracy([("resnet20", 85.60, 86.27, 84.0), ("resnet56", 80.0, 82.5, None)]) == \
        "not reproduced (resnet56: 2.50 behind fp32+Fixup)"
    assert v.accuracy([("resnet20", 85.0, 85.5, 85.2)]) == "not reproduced (resnet20: 0.20 behind WAGEUBN)"
    assert v.accuracy([("resnet20", 85.0, 85.5, 85.2, 1)]) == "not reproduced (resnet20: 0.20 behind WAGEUBN (1 seed))"
    assert v.accuracy([("resnet20", 85.0, 85.5, 84.7)]) == \
        "reproduced (resnet20: EOQ -0.50 against fp32+Fixup, +0.30 against WAGEUBN)"
    assert v.accuracy([("resnet20", 85.0, None, None)]) == "not measured"
    assert v.accuracy([("resnet20", math.nan, 85.0, None)]) == "not measured"     # no EOQ run finished


def test_storage_isometry_cost_and_small_batch():
    assert v.storage(65, 65) == "reproduced" and v.storage(64, 65).startswith("not reproduced (1 of 65")
    assert v.storage(None, None, 8) == "reproduced (by the spec)" and v.storage(None, None, None) == "not measured"
    assert v.isometry(1.0023, 110) == "reproduced (ResNet-110: unit φ / shortcut φ within 0.0023 of 1)"
    assert v.isometry(0.93, 56).startswith("not reproduced") and v.isometry(None, None) == "not measured"
    assert v.cost([("training BN, serial", 46.2, 7.9), ("inference, parallel", 75.0, 20.0)]) == \
        "reproduced in: inference, parallel"
    assert v.cost([("training BN, serial", 46.2, 7.9)]) == "not reproduced in any reading"
    ahead = {1: {"EOQ": 30.0, "fp32+BN": 20.0, "WAGEUBN": 25.0, "fp32+Fixup": 31.0}, 2: {"EOQ": 35.0, "fp32+BN": 34.0}}
    assert v.small_batch(ahead) == "reproduced (batch 1, 2)"
    behind = {1: {"EOQ": 30.0, "WAGEUBN": 30.5}, 2: {"EOQ": 35.0, "fp32+BN": 34.0}, 4: {"EOQ": 1.0, "fp32+BN": 50.0}}
    assert v.small_batch(behind) == "not reproduced (batch 1: WAGEUBN 0.50 ahead)"    # batch 4 is not judged
    assert v.small_batch({1: {"EOQ": 30.0}}) == "not measured"


def test_the_isometry_ratio_is_taken_against_each_units_shortcut(tmp_path):
    """blocks.csv by hand: a transition unit at phi 0.5 with an option-A shortcut (0.5) is isometric;
    the unit farthest from its shortcut decides; other depths, precisions and kinds do not count."""
    from analysis.report import _farthest_unit_phi
    from eoq.training.csvfile import write_rows

    base = {"depth": 56, "norm": "fixup", "precision": "eoq", "stage": "trained", "kind": "residual",
            "method": "hutchinson"}
    rows = [{**base, "block": "stages.0.0", "phi1": 1.002, "phi_shortcut": 1.0},
            {**base, "block": "stages.1.0", "phi1": 0.5001, "phi_shortcut": 0.5},
            {**base, "block": "stages.1.1", "phi1": 0.97, "phi_shortcut": 1.0},
            {**base, "block": "stages.0.0", "kind": "block", "phi1": 3.0, "phi_shortcut": 1.0},
            {**base, "block": "stages.0.0", "precision": "fp32", "phi1": 2.0, "phi_shortcut": 1.0},
            {**base, "block": "stages.0.0", "depth": 20, "phi1": 2.0, "phi_shortcut": 1.0}]
    write_rows(tmp_path / "blocks.csv", rows)
    assert _farthest_unit_phi(tmp_path, 56) == 0.97
    assert v.isometry(0.97, 56) == "reproduced (ResNet-56: unit φ / shortcut φ within 0.03 of 1)"
    assert _farthest_unit_phi(tmp_path, 110) is None
