"""Compare the final checkpoints of two runs tensor by tensor (torch.equal).

    python reports/engines/same_weights.py RUN_A RUN_B
"""
import sys

import torch


def main(a_dir: str, b_dir: str) -> None:
    a = torch.load(f"{a_dir}/checkpoint.pt", weights_only=True)["model"]
    b = torch.load(f"{b_dir}/checkpoint.pt", weights_only=True)["model"]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    print(f"{len(a)} tensors in the final checkpoints, {len(differ)} differ", differ[:5])


if __name__ == "__main__":
    main(*sys.argv[1:3])
