"""The inference-suboptimality table of Cremer, Li & Duvenaud (2018), Table 2, on Fashion-MNIST
at the size this 2-core CPU allows, with the semi-amortized row of Kim et al. (2018).

It is ``examples/inference_gaps.py`` (one home for the study: two VAEs with the same
784-200-200-20 networks, dynamically binarized Fashion-MNIST, one with the factorized-Gaussian
guide and one with a planar flow of length 4; per model log p̂(x), L[q*_flow], L[q*_FFG],
L[q_SA], L[q], the approximation and amortization gaps, BDMC) run with the protocol below:
1000 test points, 5000 IWAE draws, AIS with T = 500 and 8 chains, 20 SA refinement steps,
10 epochs. ``BENCHMARKS.md`` sets the result next to the paper's table.

    python benchmarks/cremer_table.py                 # about an hour on the 2-core VM
    python benchmarks/cremer_table.py --eval-points 200   # other options pass to the example

Needs Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "inference_gaps.py"
PROTOCOL = ["--dataset", "fashion-mnist", "--eval-points", "1000", "--iw-samples", "5000",
            "--eval-samples", "500", "--ais-steps", "500", "--ais-chains", "8",
            "--bdmc-points", "50", "--semi-amortized", "20", "--out", "runs/cremer_table"]

if __name__ == "__main__":
    sys.exit(subprocess.run([sys.executable, str(EXAMPLE), *PROTOCOL, *sys.argv[1:]]).returncode)
