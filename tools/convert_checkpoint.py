"""Converts 4M checkpoints between ml-4m (PyTorch) and fourm_jax (Orbax).

    python tools/convert_checkpoint.py --from ml4m SRC_DIR --to orbax DST_DIR [--unscanned]
    python tools/convert_checkpoint.py --from orbax SRC_DIR --to ml4m DST_DIR

ml4m directories hold model.safetensors + config.json (ml-4m's release format, e.g. a download of
EPFL-VILAB/4M-7_B_CC12M); orbax directories are fourm_jax checkpoints (a params-only checkpoint, a
training-run step, or a training-run root, whose latest step is used). DST must not exist.
"""

import argparse
import sys

from fourm_jax.convert import files
from fourm_jax.convert.ml4m import ConversionError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", nargs=2, metavar=("KIND", "SRC"), required=True,
                        help=f"source kind ({', '.join(files.KINDS)}) and directory")
    parser.add_argument("--to", dest="destination", nargs=2, metavar=("KIND", "DST"), required=True,
                        help=f"destination kind ({', '.join(files.KINDS)}) and directory (must not exist)")
    parser.add_argument("--unscanned", action="store_true",
                        help="ml4m -> orbax: store one parameter set per layer instead of stacked layers")
    args = parser.parse_args(argv)
    overrides = dict(scan_layers=False) if args.unscanned else {}
    try:
        files.convert(args.source[0], args.source[1], args.destination[0], args.destination[1], **overrides)
    except (ConversionError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.destination[0]} checkpoint {args.destination[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
