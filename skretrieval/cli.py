"""The ``skretrieval`` command line: a thin argparse front end over the public API."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from ._demo import run_demo

    run_demo(
        args.encoder, image_size=args.image_size, topk=args.topk, batch_size=args.batch_size,
        device=args.device, verbose=1,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skretrieval", description="Image-to-image retrieval.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="Retrieve scikit-learn's digits with the pretrained default encoder (offline).",
        description="Fit on the digits train split, query with the test split, print Recall@1/5 "
        "and kNN accuracy.",
    )
    demo.add_argument("--encoder", default="efficientnet_lite0", help="encoder name (default: %(default)s)")
    demo.add_argument("--image-size", type=int, default=None, help="input size (default: the encoder's)")
    demo.add_argument("--topk", type=int, default=5, help="neighbours in the vote (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 success, 1 failure, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"skretrieval {args.command}: error: {exc}", file=sys.stderr)
        print("hint: run with --help to see the accepted options.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
