"""``python -m tokenizer.motion export RUN_DIR OUT [--record JSON]``: a motion-stage run's motion weights -> the file
DeCo-VAE loads (safetensors + a JSON record beside it). Training itself is the VAE trainer's ``motion`` stage."""
from __future__ import annotations

import argparse
import sys

from .objective import export_motion


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.motion", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a motion run's EMA motion weights as a DeCo-VAE motion checkpoint")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--record", default="{}", help="JSON object merged into the record (command, data, time, ...)")
    args = parser.parse_args(argv)
    import json

    try:
        record = json.loads(args.record)
        out = export_motion(args.run_dir, args.out, record)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
