"""The LLM family's ``otu data`` subcommands: ``otu data entities`` writes the synthetic
fictitious-entity QA set (ELUDe format) that ``task.data.synthetic`` generates into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from otu.cli_args import seed_arg, writable_dir
from otu.errors import SpecError


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser("entities", help="synthetic fictitious-entity QA set (ELUDe format)")
    d.add_argument("--out", type=Path, required=True, help="directory for the JSON files")
    d.add_argument("--seed", type=seed_arg, default=0, help="random seed of the generator (default 0)")
    d.set_defaults(handler=cmd_entities)


def cmd_entities(args: argparse.Namespace) -> None:
    from rich.console import Console

    from otu.llm.synthetic import write_entities

    if args.out.exists() and not args.out.is_dir():
        raise SpecError(f"--out: {args.out} is a file, not a directory")
    writable_dir(args.out, "--out")
    files = write_entities(args.out, seed=args.seed)
    console = Console(stderr=True, soft_wrap=True)
    for name, path in files.items():
        console.print(f"{name}: {path}")
