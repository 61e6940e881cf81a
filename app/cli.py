"""Operator commands (SPEC §7): ``flask --app wsgi <command>``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app

from app.extensions import app_session


def _now() -> datetime:
    return datetime.now(UTC)


@click.command("load-registry")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load_registry_command(path: Path) -> None:
    """Load (upsert) the insurance registry from a JSON file, all or nothing."""
    from app.services.registry import RegistryInvalid, load_registry

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: not valid UTF-8 JSON: {exc}") from None
    started = time.perf_counter()
    try:
        with app_session() as session:
            report = load_registry(session, current_app.extensions["domain"].pii, data, _now())
    except RegistryInvalid as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise click.ClickException(f"{path}: nothing was loaded ({len(exc.problems)} problem(s) shown)") from None
    click.echo(
        f"loaded {report.persons} persons ({report.persons_new} new), {report.accounts} accounts "
        f"({report.balance_changes} balances changed), {report.households} households, "
        f"{report.institutions} institutions in {time.perf_counter() - started:.1f} s"
    )


@click.command("create-staff")
@click.argument("username")
@click.option("--role", type=click.Choice(["window", "auditor", "admin"]), required=True)
def create_staff_command(username: str, role: str) -> None:
    """Create a staff user (or give an existing one a new token) and print the token once."""
    from app.services.staff_accounts import create_staff

    with app_session() as session:
        token = create_staff(session, username, role, _now())
    click.echo(token)


@click.command("seed-demo")
def seed_demo_command() -> None:
    """Load the small demo registry, institutions and staff (prints the staff tokens)."""
    from app.demo import seed_demo

    with app_session() as session:
        tokens = seed_demo(session, current_app.extensions["domain"].pii, _now())
    click.echo("demo registry loaded; staff tokens (shown once):")
    for username, token in tokens.items():
        click.echo(f"  {username}: {token}")


@click.command("verify-ledger")
def verify_ledger_command() -> None:
    """Recompute balances, journals, settlements, cap and binding usage from the ledger; exit 1 on any difference."""
    from app.services.ledger_check import verify_ledger

    with app_session() as session:
        report = verify_ledger(session)
    for difference in report.differences:
        click.echo(f"DIFFERENCE {difference}", err=True)
    click.echo(f"checked {report.accounts} accounts, {report.journals} journals, {report.settlements} settlements, "
               f"{report.cap_rows} cap rows, {report.binding_rows} binding usage rows: "
               + ("clean" if report.clean else f"{len(report.differences)} difference(s)"))
    if not report.clean:
        raise SystemExit(1)


def register_cli(app: Flask) -> None:
    from notify.worker import notify_worker_command

    for command in (load_registry_command, create_staff_command, seed_demo_command, notify_worker_command,
                    verify_ledger_command):
        app.cli.add_command(command)
    from app.ops_cli import register_ops_cli

    register_ops_cli(app)



