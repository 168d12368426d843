"""Write a random-weight bundle of a named architecture (same cost per tile as trained weights).

    python benchmarks/make_model.py r50 /tmp/wsi-gpu/models/r50

The resnet50 + DeepLabV3+ r50 bundle is ~100 MB, too large to send to the GPU machine with
the checkout: it is made there (benchmarks/gpu_session.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.stages import ARCHS, make_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("out", type=Path, help="model folder to write (kept if it has model.json)")
    args = p.parse_args(argv)
    folder = make_model(args.out, ARCHS[args.arch], f"bench-random-{args.arch}")
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
