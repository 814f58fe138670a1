"""`edgeshard`, the user's command: each subcommand's module defines its options cheaply and
imports the heavy modules (torch, transformers, aiohttp) only when it runs."""
