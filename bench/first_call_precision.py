"""The first-call precision fault of MKL's vector math (docs/compute.md): in fresh processes, score the
same rows twice with a tiny-random model and count the processes whose first pass differs from their
second (|Δ| > 1e-4). Every later call is exact, so the second pass is the reference.

    python bench/first_call_precision.py [--processes 60]

To measure the code before the warm-up, run it with PYTHONPATH pointing at a checkout of a35b82d.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, numpy as np
import rewardstack.cli  # the CLI's imports, with which the fault showed
from rewardstack.data.encode import as_messages
from rewardstack.model import RewardModel
model = RewardModel.from_pretrained(sys.argv[1]).eval()
rows = [("Prompt number %d " % i + "word " * i, "answer %d" % i * (i + 1)) for i in range(5)]
sequences = [model.encoder.encode(as_messages(p), [r])[0][0] for p, r in rows]
first, second = model.rewards(sequences), model.rewards(sequences)
print(float(np.abs(first - second).max()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=60)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_packing import make_model  # tiny-random with seeded non-zero LoRA and head

    with tempfile.TemporaryDirectory() as tmp:
        make_model(objective="bt").save(Path(tmp) / "m")
        gaps = [float(subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "m")], capture_output=True, text=True, check=True).stdout)
                for _ in range(args.processes)]
    off = sum(gap > 1e-4 for gap in gaps)
    print(f"{args.processes} fresh processes: first scoring pass off the second in {off} (largest gap {max(gaps):.2e})")


if __name__ == "__main__":
    main()
