"""`ovembed bench …`: the measuring tools (engine, http, soak, memory, store)."""

from __future__ import annotations

import click

from ovembed.cli.common import OvembedGroup


@click.group(cls=OvembedGroup)
def bench() -> None:
    """Speed and resource measurements: ours against peers, a service under load, memory, stores."""
