"""Operator commands (SPEC §7): ``flask --app wsgi <command>``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app

from app.extensions import app_session


def _now() -> datetime:
    return datetime.now(UTC)


@click.command("load-registry")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--skip-stale", is_flag=True,
              help="Load everything else and leave the accounts that moved after the file's as_of.")
def load_registry_command(path: Path, skip_stale: bool) -> None:
    """Load (upsert) the insurance registry from a JSON file, all or nothing.

    Balances change only by one registry_sync journal (with the file's SHA-256). Accounts that moved
    here after the file's as_of are listed; then nothing is loaded (exit 1) unless --skip-stale.
    """
    import hashlib

    from app.services.registry import RegistryInvalid, RegistryStale, load_registry

    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: not valid UTF-8 JSON: {exc}") from None
    started = time.perf_counter()
    try:
        with app_session() as session:
            report = load_registry(session, current_app.extensions["domain"].pii, data, _now(),
                                   sha256=hashlib.sha256(raw).hexdigest(), skip_stale=skip_stale)
    except RegistryInvalid as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise click.ClickException(f"{path}: nothing was loaded ({len(exc.problems)} problem(s) shown)") from None
    except RegistryStale as exc:
        for line in _stale_lines(exc.report):
            click.echo(f"stale: {line}", err=True)
        raise click.ClickException(
            f"{path}: nothing was loaded: {len(exc.report.stale)} account(s) moved after as_of "
            f"{exc.report.as_of}, {len(exc.report.stale_persons)} person(s) loaded from a newer snapshot; "
            "load a newer snapshot, or pass --skip-stale to leave them") from None
    for line in _stale_lines(report):
        click.echo(f"stale (left): {line}", err=True)
    click.echo(
        f"loaded {report.persons} persons ({report.persons_new} new), {report.accounts} accounts "
        f"({report.balance_changes} balances changed, {len(report.stale)} stale left), {report.households} "
        f"households, {report.institutions} institutions in {time.perf_counter() - started:.1f} s; "
        f"sha256 {report.sha256}" + (f", registry_sync journal {report.journal_id}" if report.journal_id else "")
    )


def _stale_lines(report: Any) -> list[str]:
    return [s.describe() for s in report.stale] + [
        f"persons[{row}]: a newer snapshot already loaded this person; row left" for row in report.stale_persons]


@click.command("create-staff")
@click.argument("username")
@click.option("--role", type=click.Choice(["window", "auditor", "admin"]), required=True)
@click.option("--console", "console_access", is_flag=True,
              help="Also set a console password (prompted, or one line on stdin) and enrol TOTP.")
def create_staff_command(username: str, role: str, console_access: bool) -> None:
    """Create a staff user (or give an existing one a new token) and print the token once."""
    from app.services.staff_accounts import create_staff

    password = _console_password() if console_access else None
    with app_session() as session:
        token = create_staff(session, username, role, _now(), current_app.config["STAFF_TOKEN_TTL_SECONDS"])
        if password is not None:
            from app.services.console_auth import provisioning_uri, set_console_credentials

            secret = set_console_credentials(session, current_app.extensions["domain"].pii, username, password,
                                             _now())
    click.echo(token)
    if password is not None:
        import segno

        uri = provisioning_uri(secret, username)
        click.echo("console: password set; add this TOTP account to an authenticator app (shown once):")
        click.echo(f"  secret: {secret}")
        click.echo(f"  otpauth: {uri}")
        segno.make(uri, error="m").terminal(compact=True)


def _console_password() -> str:
    import sys

    from app.errors import ValidationFailed
    from app.services.console_auth import check_password_rules

    if sys.stdin.isatty():
        password = click.prompt("console password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        check_password_rules(password, "")
    except ValidationFailed as exc:
        raise click.ClickException(exc.message) from None
    return password


@click.command("deactivate-staff")
@click.argument("username")
def deactivate_staff_command(username: str) -> None:
    """Disable a staff user and revoke their token at once (``create-staff`` enables them again)."""
    from app.errors import NotFound
    from app.services.staff_accounts import revoke_staff_token

    try:
        with app_session() as session:
            revoke_staff_token(session, username, _now(), deactivate=True)
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{username}: deactivated, token revoked")


@click.command("revoke-staff-token")
@click.argument("username")
def revoke_staff_token_command(username: str) -> None:
    """Revoke a staff user's API token (a lost or leaked one); ``create-staff`` issues a new one."""
    from app.errors import NotFound
    from app.services.staff_accounts import revoke_staff_token

    try:
        with app_session() as session:
            revoke_staff_token(session, username, _now())
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{username}: token revoked")


@click.command("seed-demo")
@click.option("--tokens-file", type=click.Path(dir_okay=False), default=None,
              help="also write the staff tokens there as shell variables (WINDOW1_TOKEN=…), readable by you only")
@click.option("--scratch-database", is_flag=True,
              help="with APP_ENV=production: this database is a throw-away one (a deployment check); seed it anyway")
def seed_demo_command(tokens_file: str | None, scratch_database: bool) -> None:
    """Load the small demo registry, institutions and staff (prints the staff tokens).

    Refused with ``APP_ENV=production`` unless ``--scratch-database``: the demo staff have published
    console passwords and TOTP secrets, the demo institutions published API secrets, and the demo
    registry would rewrite balances and institutions of the same codes.
    """
    from app.demo import seed_demo

    if current_app.config.get("APP_ENV") == "production" and not scratch_database:
        raise click.ClickException(
            "refused on a production app (APP_ENV=production), nothing was written: the demo creates staff with "
            "published passwords and institutions with published API secrets. On a throw-away database "
            "(a deployment check) pass --scratch-database.")
    with app_session() as session:
        tokens = seed_demo(session, current_app.extensions["domain"].pii, _now())
    click.echo("demo registry loaded; staff tokens (shown once):")
    for username, token in tokens.items():
        click.echo(f"  {username}: {token}")
    if tokens_file:
        path = Path(tokens_file)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("".join(f"{username.upper()}_TOKEN={token}\n" for username, token in tokens.items()))
        click.echo(f"  (also in {path})")


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
    app.cli.add_command(deactivate_staff_command)
    app.cli.add_command(revoke_staff_token_command)
    from app.ops_cli import register_ops_cli

    register_ops_cli(app)



