"""`edgeshard`: the user's command. Each subcommand's module defines its options without heavy
imports; torch, transformers and aiohttp load only inside the subcommand that needs them, so
`edgeshard plan` or `edgeshard status` answers at once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import PeerError
from . import chat, cluster, doctor, generate, init, perplexity, status
from . import plan as plan_command

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `edgeshard`."""
    parser = argparse.ArgumentParser(prog="edgeshard", description="EdgeShard: plan and run an LLM across devices.")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_command.add_plan_arguments(commands.add_parser("plan", help="choose devices and split points for a cluster"))
    plan_command.add_compare_arguments(commands.add_parser("compare", help="every strategy side by side"))
    generate.add_arguments(commands.add_parser("generate", help="run the model split over local stage servers"))
    chat.add_arguments(commands.add_parser("chat", help="chat: through a peer's API, or over local stage servers"))
    cluster.add_arguments(commands.add_parser("cluster", help="run N edgeshard-peer processes on this machine"))
    status.add_arguments(commands.add_parser("status", help="a running peer's view of the cluster and its plan"))
    init.add_arguments(commands.add_parser("init", help="write a new cluster secret for --secret-file"))
    doctor.add_arguments(commands.add_parser("doctor", help="why a cluster does not form: checks from this host"))
    perplexity.add_arguments(
        commands.add_parser("perplexity", help="a text's perplexity, as llama-perplexity scores it")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgeshard`."""
    args = build_parser().parse_args(argv)
    if args.command in ("plan", "compare"):
        return plan_command.main(args)
    run = {
        "generate": generate.main,
        "chat": chat.main,
        "cluster": cluster.main,
        "status": status.main,
        "init": init.main,
        "doctor": doctor.main,
        "perplexity": perplexity.main,
    }
    try:
        return run[args.command](args)
    except PeerError as error:
        print(f"edgeshard: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
