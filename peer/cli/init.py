"""`edgeshard init --out FILE`: a new cluster secret, for every member's `--secret-file`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard init`."""
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the secret (mode 0600)")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing secret (every member needs the new one)"
    )


def main(args: argparse.Namespace) -> int:
    """Write the secret and say what to do with it."""
    from edgeshard.discovery.auth import SecretError, write_secret

    path = Path(args.out)
    try:
        write_secret(path, args.force)
    except (SecretError, OSError) as error:
        print(f"edgeshard init: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote a new cluster secret to {path} (readable by you only).\n"
        f"Copy it to every device of the cluster (e.g. scp -p), then start each peer with\n"
        f"  edgeshard-peer --secret-file {path}\n"
        f'or set secret_file = "{path}" in /etc/edgeshard/peer.toml. Peers without it cannot join.'
    )
    return 0
