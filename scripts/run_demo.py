"""``make run``: migrate, load the demo registry, start the local WeChat/Alipay emulator (when no
real credentials are configured) and serve the API on 127.0.0.1:8000 with gunicorn.

Stops both processes on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from app.config import INSTANCE_DIR, ROOT, Config

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8000"))
SANDBOX_PORT = int(os.environ.get("SANDBOX_PORT", "8001"))
SANDBOX_URL = f"http://127.0.0.1:{SANDBOX_PORT}"
DEMO_WECHAT = {"appid": "wxdemo0000000001", "secret": "demo-wechat-secret-not-for-production"}
DEMO_ALIPAY_APPID = "2021000000000001"
DEMO_TEMPLATES = {"WECHAT_TEMPLATE_DEDUCTION": "demo-wechat-deduction", "WECHAT_TEMPLATE_RECEIPT":
                  "demo-wechat-receipt", "ALIPAY_TEMPLATE_DEDUCTION": "demo-alipay-deduction"}
DEMO_MSG_TOKEN = "demo-msg-token"


def _wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 — a local URL we built
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def _sandbox_env() -> tuple[dict[str, str], list[str]]:
    """Settings that point the service at the emulator, and the emulator's command line."""
    config = Config.from_env(SANDBOX_URL=SANDBOX_URL)  # creates instance/dev-secrets.json once
    private = serialization.load_pem_private_key(config.ALIPAY_APP_PRIVATE_KEY.encode(), password=None)
    app_public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    options = {
        "host": "127.0.0.1", "port": SANDBOX_PORT,
        "wechat": [{**DEMO_WECHAT, "templates": [DEMO_TEMPLATES["WECHAT_TEMPLATE_DEDUCTION"],
                                                 DEMO_TEMPLATES["WECHAT_TEMPLATE_RECEIPT"]]}],
        "alipay": [{"appid": DEMO_ALIPAY_APPID, "app_public_key_pem": app_public,
                    "templates": [DEMO_TEMPLATES["ALIPAY_TEMPLATE_DEDUCTION"]],
                    # R21: the app's content-encryption key, for my.getPhoneNumber's response.
                    "aes_key": config.ALIPAY_AES_KEY}],
        "alipay_private_key_file": str(_emulator_key()),
        "push": {"url": f"http://{HOST}:{PORT}/api/v1/callbacks/wechat", "token": DEMO_MSG_TOKEN,
                 "format": "xml", "appid": DEMO_WECHAT["appid"]},
    }
    options_file = INSTANCE_DIR / "sandbox.json"
    options_file.write_text(json.dumps(options, indent=1))
    public_out = INSTANCE_DIR / "sandbox-alipay-public.pem"
    command = [sys.executable, "-m", "sandbox", "--config", str(options_file),
               "--alipay-public-key-out", str(public_out)]
    env = {
        "SANDBOX_URL": SANDBOX_URL,
        "WECHAT_APPID": DEMO_WECHAT["appid"],
        "WECHAT_SECRET": DEMO_WECHAT["secret"],
        "WECHAT_API_BASE_URL": SANDBOX_URL + "/",
        "WECHAT_MSG_TOKEN": DEMO_MSG_TOKEN,
        "ALIPAY_APPID": DEMO_ALIPAY_APPID,
        "ALIPAY_APP_PRIVATE_KEY": config.ALIPAY_APP_PRIVATE_KEY,
        "ALIPAY_GATEWAY_URL": SANDBOX_URL + "/gateway.do",
        "ALIPAY_AES_KEY": config.ALIPAY_AES_KEY,
        "ALIPAY_PUBLIC_KEY_FILE": str(public_out),
        **DEMO_TEMPLATES,
    }
    return env, command


def _emulator_key() -> Path:
    path = INSTANCE_DIR / "sandbox-alipay-key.pem"
    if not path.exists():
        from app.config import _rsa_pem

        path.write_text(_rsa_pem())
        path.chmod(0o600)
    return path


def _flask(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], env=env, cwd=ROOT, check=True)


def main() -> None:
    INSTANCE_DIR.mkdir(exist_ok=True)
    env = dict(os.environ)
    if HOST not in ("127.0.0.1", "::1", "localhost") and env.get("APP_ENV", "development") != "production":
        print(f"WARNING: development mode serving on the non-loopback address {HOST}: its secrets live under "
              "instance/ and sign-in goes to the emulator; do not expose it. Set APP_ENV=production for real use.",
              file=sys.stderr)
    children: list[subprocess.Popen] = []
    use_sandbox = not env.get("WECHAT_APPID")
    if use_sandbox:
        extra, command = _sandbox_env()
        children.append(subprocess.Popen(command, cwd=ROOT))
        _wait_for(SANDBOX_URL + "/_sandbox/state")
        extra["ALIPAY_PUBLIC_KEY"] = Path(extra.pop("ALIPAY_PUBLIC_KEY_FILE")).read_text()
        env.update(extra)
    try:
        _flask(env, "db", "upgrade")
        production = env.get("APP_ENV", "development") == "production"
        if production:
            # The demo's staff have published passwords: never on a production app (seed-demo refuses).
            print("APP_ENV=production: the demo data is not loaded; use load-registry and create-staff.",
                  file=sys.stderr)
        else:
            # The staff tokens also go to a file the docs' walkthroughs read (instance/ is local and 0600).
            _flask(env, "seed-demo", "--tokens-file", str(INSTANCE_DIR / "demo-staff-tokens.env"))
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"{HOST}:{PORT}", "--workers", "2", "--threads", "4",
             "--access-logfile", "-", "--no-control-socket", "wsgi:app"], env=env, cwd=ROOT)
        children.append(server)
        _wait_for(f"http://{HOST}:{PORT}/healthz")
        print(f"\nServing on http://{HOST}:{PORT}  (API docs: /api/docs, OpenAPI: /api/openapi.json)")
        if not production:
            _print_console_sign_in()
        if use_sandbox:
            print(f"Local WeChat/Alipay emulator on {SANDBOX_URL}. Get a demo login code with:\n"
                  f"  curl -s -X POST {SANDBOX_URL}/_sandbox/wechat/login-code "
                  f"-H 'Content-Type: application/json' -d '{{\"openid\": \"o-demo-owner\"}}'\n"
                  f"and sign in with it:  curl -s -X POST http://{HOST}:{PORT}/api/v1/auth/wechat "
                  f"-H 'Content-Type: application/json' -d '{{\"code\": \"<code>\"}}'\n"
                  "Then prove who you are (name + ID number alone link nothing): see README, "
                  "\"Try it\", and docs/identity.md.\n", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def _print_console_sign_in() -> None:
    """Issue 12: how to sign in to the service-window console as a demo staff member."""
    from app.demo import DEMO_CONSOLE_PASSWORD

    print(f"Service-window console: http://{HOST}:{PORT}/console/  — users window1 (窗口经办), admin1 (管理员), "
          f"auditor1 (审计, read-only), password {DEMO_CONSOLE_PASSWORD}\n"
          f"  current one-time code: .venv/bin/python -c \"from app.demo import totp_now; print(totp_now('window1'))\"",
          flush=True)


if __name__ == "__main__":
    main()
