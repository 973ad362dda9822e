"""Weight-grid statistics at the end of EOQ runs: per quantized layer, the LSB exponent at init and
at the end, the standard deviation of the int8 codes and the share of saturated codes.

Usage: .venv/bin/python reports/comparison/exponent-policy-ablation-5ep/grid_stats.py RUN_DIR [RUN_DIR ...]
(each RUN_DIR holds the checkpoint.pt and config.json of an `eoq train` run).
"""
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from eoq.training.config import TrainConfig  # noqa: E402
from eoq.training.loop import build_run  # noqa: E402


def main(dirs):
    for d in map(Path, dirs):
        cfg = TrainConfig.from_dict(json.loads((d / "config.json").read_text())["train"])
        cfg.data, cfg.train_limit, cfg.test_limit = "embedded", 16, 16   # init only: no data needed
        init = build_run(cfg).model.state_dict()            # the run's seeded init, prepared
        end = torch.load(d / "checkpoint.pt", weights_only=True)["model"]
        raised, stds, sats = 0, [], []
        print(f"{d}:")
        for k, e in end.items():
            if not k.endswith("weight_exp"):
                continue
            codes = (end[k[:-len("_exp")]] * 2.0 ** -e).round()
            std, sat = float(codes.std()), 100 * float((codes.abs() == 127).float().mean())
            raised += int(e > init[k])
            stds.append(std)
            sats.append(sat)
            print(f"  {k[:-len('.weight_exp')]:24s} exponent {int(init[k]):4d} -> {int(e):4d}  "
                  f"code std {std:5.1f}  saturated {sat:.2f}%")
        print(f"  {raised} of {len(stds)} layers raised their exponent; code std {min(stds):.1f} to "
              f"{max(stds):.1f}, median {statistics.median(stds):.1f}; saturated at most {max(sats):.2f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
