"""Operator commands of issue 14 (SPEC §7): ``rotate-pii-key``."""

from __future__ import annotations

import click
from flask import Flask, current_app

from app.extensions import db


@click.command("rotate-pii-key")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="rows per transaction")
@click.option("--pause", default=0.0, show_default=True, type=click.FloatRange(0, 60),
              help="seconds to sleep between batches (to go easy on a busy primary)")
def rotate_pii_key_command(batch_size: int, pause: float) -> None:
    """Re-encrypt personal data under the current PII_KEY, online, in batches (resumable: run it again)."""
    from app.services.pii_rotation import RotationRefused, count_pending, rotate_pii

    pii = current_app.extensions["domain"].pii
    engine = db.engine
    pending = count_pending(engine, pii)
    total = sum(pending.values())
    click.echo(f"active key id {pii.active_key_id}; rows to re-encrypt: "
               + ", ".join(f"{t} {n}" for t, n in pending.items()) + f" (total {total})")

    def progress(table: str, done: int, last_id: int, report) -> None:  # type: ignore[no-untyped-def]
        click.echo(f"  {table}: {done} rows scanned (up to id {last_id}); {report.rewritten_rows}/{total} "
                   f"rewritten, {report.rows_per_second:.0f} rows/s")

    try:
        report = rotate_pii(engine, pii, batch_size=batch_size, progress=progress, pause_seconds=pause)
    except RotationRefused as exc:
        raise click.ClickException(f"refused, nothing written: {exc}") from None
    click.echo(f"rewrote {report.rewritten_rows} rows ({report.rewritten_values} values) in {report.seconds:.1f} s "
               f"({report.rows_per_second:.0f} rows/s); {report.skipped_changed} changed meanwhile by the service")
    if report.unreadable:
        for line in report.unreadable:
            click.echo(f"UNREADABLE {line}", err=True)
        raise click.ClickException(f"{len(report.unreadable)} value(s) do not decrypt with the configured keys; "
                                   "add their key to PII_OLD_KEYS and run again")
    left = sum(count_pending(engine, pii).values())
    click.echo("done: every value is under the active key; the old key may be removed from PII_OLD_KEYS"
               if left == 0 else f"{left} rows still under an old key (written by an old process?): run again")


def register_ops_cli(app: Flask) -> None:
    app.cli.add_command(rotate_pii_key_command)
