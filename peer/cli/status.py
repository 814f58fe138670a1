"""`edgeshard status`: a running peer's view of the cluster and its plan (standard library only)."""

from __future__ import annotations

import argparse
import json
import os

from ..api.client import DEFAULT_API, describe_status, get_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard status`."""
    parser.add_argument("--api", default=DEFAULT_API, metavar="URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("EDGESHARD_API_KEY", ""),
        help="the peer's API key (default: $EDGESHARD_API_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw /v1/status object")


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard status`."""
    status = get_status(args.api, api_key=args.api_key)
    print(json.dumps(status, indent=2) if args.json else describe_status(status))
    return 0
