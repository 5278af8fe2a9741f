"""Options several commands share."""

from __future__ import annotations

from pathlib import Path

import click

DATA_OPTION = click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default="./data",
    show_default=True,
    envvar="OFFLOADD_DATA",
    help="Data directory (holds the key database).",
)
KEYS_OPTION = click.option(
    "--keys",
    "keys_url",
    envvar="OFFLOADD_KEYS",
    help="Key store: postgresql://… (shared by several hosts); default SQLite in --data.",
)
PLANS_OPTION = click.option(
    "--plans",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="OFFLOADD_PLANS",
    help="Plans file (TOML or JSON).",
)
