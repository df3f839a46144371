"""Peak memory of exported artifacts, each measured in a clean worker that only loads and runs it.

    python tools/artifact_memory.py ARTIFACT_DIR [...]

Prints, per artifact: size on disk, the worker's RSS after importing its libraries (baseline),
its peak RSS while loading the artifact and running prefill 128 + decode 32 (1 thread), and the
difference (what the artifact itself costs), as `measure_artifact` records them in a manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+")
    args = ap.parse_args()
    from hwnas.export import FORMATS, measure_artifact

    print("| artifact | format | size MB | worker baseline MB | peak RSS MB | artifact's own MB | manifest's peak MB |")
    print("|---|---|---|---|---|---|---|")
    for a in args.artifacts:
        folder = Path(a)
        m = json.loads((folder / "manifest.json").read_text())
        got = measure_artifact(folder, FORMATS[m["format"]])
        recorded = (m.get("measured") or {}).get("peak_mem_mb")
        print(f"| {folder.name} | {m['format']} | {m['size_mb']} | {got['process_baseline_mb']} | {got['peak_mem_mb']} | "
              f"{got['artifact_mem_mb']} | {recorded} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
