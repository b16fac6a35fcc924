"""Encoder comparison entry point: `python -m fusion.compare out=DIR genomics=kmer,dosage,caduceus_tiny
brain=fc,brainlm_mae_tiny seeds=0,1,2 [any train key=value ...]`.

Runs the genomics x brain x seed grid of fusion.train runs in this process and writes DIR/results.csv, DIR/summary.md
and DIR/summary.png; run the same command again after a kill and the finished cells are skipped. The logic is
fusion.app.compare (grid, resume) and fusion.app.compare_report (tables, figure); kb/evaluation.md describes the
metrics. Exit status: 0 every cell finished, 1 some cell failed (its traceback in DIR/cells/<cell>.error.txt),
2 the command is wrong (an unknown option or key, a missing out=).
"""

from __future__ import annotations

import logging
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from fusion.app.compare import compare, parse_args
from fusion.errors import USER_ERRORS

USAGE = __doc__.split("\n\n")[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        cfg = parse_args(argv)
        records, failed = compare(cfg)
    except (HydraException, OmegaConfBaseException, *USER_ERRORS) as err:
        print(f"fusion.compare: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"fusion.compare: {err}\n{USAGE}", file=sys.stderr)
        return 2
    print(f"{len(records)} cells in {cfg.out}: results.csv, summary.md, summary.png")
    if failed:
        print(f"fusion.compare: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
