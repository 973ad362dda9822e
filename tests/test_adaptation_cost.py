"""analysis.adaptation_cost: seconds, energy and memory per adapted image."""
import json
from pathlib import Path

import pytest

from analysis import adaptation_cost as ac
from analysis.cost.memory import saved_activations, training_state
from analysis.cost.report import count_config
from analysis.cost.tables import load_tables
from eoq.models import build_model


def _row(seed, images, seconds, method="EOQ", batch=2):
    return dict(method=method, batch_size=batch, corruption="contrast", severity=3, seed=seed, images=images,
                seconds=seconds)


def test_measured_seconds_are_the_median_over_cells_at_the_stream_end():
    """Two cells: 3 s and 5 s for 200 images -> 15 and 25 ms per image, median 20 ms; the readings
    before the end, other methods and other batch sizes do not count."""
    rows = [_row(0, 0, 0.0), _row(0, 100, 1.0), _row(0, 200, 3.0), _row(1, 0, 0.0), _row(1, 200, 5.0),
            _row(2, 200, 100.0, method="WAGEUBN"), _row(3, 200, 100.0, batch=4)]
    assert ac.measured_seconds(rows, "EOQ", 2) == pytest.approx(0.020)
    assert ac.measured_seconds(rows, "EOQ", 8) != ac.measured_seconds(rows, "EOQ", 8)      # none: nan


def test_energy_is_the_step_count_per_image_and_memory_grows_by_one_image_of_activations(tmp_path):
    spec = "eoq"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps(
        {"train": {"model": "resnet20", "norm": "fixup", "momentum": 0.875}, "spec": spec}))
    costs = ac.device_costs(tmp_path, {"EOQ": ("b", "batch", 0.01)}, [1, 2], [])
    energy, _ = load_tables(None)
    step2 = count_config("resnet20", "fixup", spec, batch=2).energy_pj(energy)
    assert costs[1].energy_uj == pytest.approx(step2 / 2 / 1e6)
    acts = saved_activations(build_model("resnet20", "fixup"), spec).total
    assert (costs[1].memory_kib - costs[0].memory_kib) * 1024 == pytest.approx(acts)
    n = sum(p.numel() for p in build_model("resnet20", "fixup").parameters())
    assert costs[0].memory_kib * 1024 == pytest.approx(n * training_state(spec, 0.875).bytes_per_weight + acts)
    assert "| EOQ | 2 |" in ac.cost_table(costs)


def test_a_folder_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ac.base_config(Path(tmp_path), "missing")


def test_timed_seconds_are_the_median_of_the_repeats_of_the_real_path(monkeypatch):
    """timed_seconds runs ``repeats`` adaptations (seeds 0, 1, 2) of ``images`` images on one thread
    and takes the median of their seconds per image."""
    seen = []

    class Run:
        def __init__(self, cfg):
            self.seconds_per_image = {0: 0.030, 1: 0.010, 2: 0.020}[cfg.seed]

    def fake(cfg):
        seen.append((cfg.seed, cfg.samples, cfg.batch_size, cfg.threads, cfg.points, cfg.bn, cfg.lr))
        return Run(cfg)

    monkeypatch.setattr(ac, "adapt", fake)
    assert ac.timed_seconds(Path("b"), "f", "frozen", 4, 1e-4, images=40, repeats=3) == pytest.approx(0.020)
    assert seen == [(s, 40, 4, 1, (40,), "frozen", 1e-4) for s in range(3)]


def test_the_cost_table_shows_both_seconds(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps(
        {"train": {"model": "resnet20", "norm": "fixup", "momentum": 0.875}, "spec": "eoq"}))
    rows = [_row(0, 200, 3.0, batch=1)]
    costs = ac.device_costs(tmp_path, {"EOQ": ("b", "batch", 0.01)}, [1, 2], rows, timed={("EOQ", 1): 0.0125})
    table = ac.cost_table(costs)
    assert "| EOQ | 1 | 12.5 ms | 15.0 ms |" in table and "| EOQ | 2 | – | – |" in table
