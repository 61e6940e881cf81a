"""deploy/ stays consistent: compose runs what the systemd units run, the image holds every package the
service imports, the nginx site passes ``nginx -t`` (where nginx is installed), the units parse."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.config import ROOT
from tests.ops_helpers import unit_command

DEPLOY = ROOT / "deploy"


def _tail(command: list[str]) -> list[str]:
    """A command without the venv prefix: ``/x/.venv/bin/gunicorn -c …`` → ``gunicorn -c …``."""
    return [Path(command[0]).name, *command[1:]]


def test_compose_runs_what_the_units_run():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"web", "worker", "migrate", "postgres", "redis"} <= set(services)
    assert services["web"]["command"] == _tail(unit_command("copay-web.service"))
    assert services["worker"]["command"] == _tail(unit_command("copay-notify.service"))
    assert services["migrate"]["command"] == _tail(unit_command("copay-migrate.service"))
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_image_holds_every_package_the_service_imports():
    containerfile = (DEPLOY / "Containerfile").read_text()
    needed = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench", "sandbox"}
    needed |= {"migrations", "policies", "pledges", "deploy", "wsgi.py", "requirements.txt"}
    missing = sorted(name for name in needed if f"COPY --chown=root:root {name} " not in containerfile
                     and f"COPY {name} " not in containerfile)
    assert not missing, f"deploy/Containerfile does not copy {missing}"
    assert 'CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "wsgi:app"]' in containerfile


def test_the_nginx_site_passes_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    openssl = shutil.which("openssl")
    if nginx is None or openssl is None:
        pytest.skip("nginx (and openssl) not installed here: `apt-get install nginx-light` to check the site")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t",
                    "-keyout", str(tmp_path / "privkey.pem"), "-out", str(tmp_path / "fullchain.pem")],
                   check=True, capture_output=True)
    site = (DEPLOY / "nginx" / "copay.conf").read_text()
    site = site.replace("/etc/ssl/copay/", f"{tmp_path}/").replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n")
    checked = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "location = /metrics" in site and "$proxy_add_x_forwarded_for" in site


def test_the_units_parse(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed here")
    for unit in (DEPLOY / "systemd").glob("copay-*"):
        shutil.copy(unit, tmp_path / unit.name)
    result = subprocess.run([analyze, "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
                            capture_output=True, text=True, timeout=60)
    # The only complaint allowed: /opt/copay is not installed on this machine.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "/opt/copay/" not in line]
    assert not problems, problems


def test_gunicorn_opens_no_control_socket(tmp_path, monkeypatch):
    """gunicorn 25.1+ listens on ~/.gunicorn/gunicorn.ctl unless told not to: a second way to reload
    or stop the service, shared by every gunicorn of the user (the last one started takes it)."""
    from gunicorn.config import Config

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    settings: dict[str, object] = {}
    exec(compile((ROOT / "deploy" / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), settings)  # noqa: S102
    config = Config()
    for name, value in settings.items():
        if name in config.settings:
            config.set(name, value)
    assert config.control_socket_disable is True
