"""Peak memory and speed of the IWAE estimate of log p(x), against K and the number of points.

For each (points, K) setting a fresh Python process loads a trained run, records its resident
memory (the data set and the model loaded), runs ``iwae_log_likelihood`` on the first ``points``
test points with K importance samples, and reports the peak resident memory
(``getrusage().ru_maxrss``), the seconds and the importance samples per second. The estimator
works on chunks of at most ``max_elements`` = samples × points × data dims (2²³ by default) and
keeps one running log-sum-exp per point, so the peak should not grow with K or with the number
of points.

    python benchmarks/iwae_memory.py runs/fashion-mnist --settings 1000:500,1000:5000,10000:5000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from pyro_vae.lab.reporting import markdown_header, markdown_row

CHILD = """
import json, resource, sys, time
import torch
from pyro_vae import iwae_log_likelihood, load_run
from pyro_vae.infer.evaluation import Estimate
run, points, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loaded = load_run(run)
x = loaded.data.x_test[:points]
y = loaded.data.y_test[:points] if loaded.vae.conditional else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
ll = Estimate.of(iwae_log_likelihood(loaded.vae, x, y, num_samples=k))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"points": x.shape[0], "K": k, "log_likelihood": ll.mean, "se": ll.stderr,
                  "seconds": seconds, "samples_per_second": k * x.shape[0] / seconds,
                  "rss_loaded_mib": before / 1024, "rss_peak_mib": peak / 1024,
                  "torch_threads": torch.get_num_threads()}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run folder")
    p.add_argument("--settings", default="1000:500,1000:5000,10000:5000",
                   help="comma-separated POINTS:K pairs")
    args = p.parse_args()
    print(markdown_header(["test points", "K", "seconds", "importance samples / s",
                           "RSS loaded (MiB)", "RSS peak (MiB)", "log p(x) (IWAE)"], "r" * 7))
    for setting in args.settings.split(","):
        points, k = setting.split(":")
        proc = subprocess.run([sys.executable, "-c", CHILD, args.run, points, k],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(markdown_row([r["points"], r["K"], f"{r['seconds']:.1f}",
                            f"{r['samples_per_second']:.0f}", f"{r['rss_loaded_mib']:.0f}",
                            f"{r['rss_peak_mib']:.0f}",
                            f"{r['log_likelihood']:.2f} ± {r['se']:.2f}"]), flush=True)


if __name__ == "__main__":
    main()
