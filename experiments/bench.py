"""Benchmark funcnn's custom backward rules against autodiff and PyTorch.

    python experiments/bench.py                  # full grid, 20 repeats
    python experiments/bench.py --quick          # tiny grid (smoke test)
    python experiments/bench.py --only ops --repeats 30 --out-dir bench_out

See `benchmarks/` for the sections, and results.md in the output folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    main(script=str(Path(__file__).resolve()))
