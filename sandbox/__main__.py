"""Run the emulator standalone: ``python -m sandbox --port 8001 --wechat-appid wx.. --wechat-secret ..``.

Options may also come from a JSON file (``--config``); command-line values are added on top::

    {"host": "127.0.0.1", "port": 8001,
     "wechat": [{"appid": "wx..", "secret": "..", "templates": ["T1"], "pages": ["pages/index"]}],
     "alipay": [{"appid": "2021..", "app_public_key_file": "app_pub.pem", "templates": ["AT1"]}],
     "alipay_private_key_file": "emulator_key.pem",
     "push": {"url": "http://127.0.0.1:5000/api/v1/callbacks/wechat", "token": "..",
              "encoding_aes_key": "..43 chars..", "format": "xml"}}
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sandbox.server import Sandbox


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="JSON file with the options below")
    p.add_argument("--host", help="default 127.0.0.1")
    p.add_argument("--port", type=int, help="default 8001")
    p.add_argument("--wechat-appid")
    p.add_argument("--wechat-secret")
    p.add_argument("--wechat-template", action="append", default=[], help="repeatable")
    p.add_argument("--alipay-appid")
    p.add_argument(
        "--alipay-app-public-key-file", type=Path, help="PEM public key of the app's RSA2 key pair"
    )
    p.add_argument("--alipay-template", action="append", default=[], help="repeatable")
    p.add_argument(
        "--alipay-private-key-file", type=Path, help="emulator's own RSA key (generated if absent)"
    )
    p.add_argument("--alipay-public-key-out", type=Path, help="write the emulator's public key PEM here")
    p.add_argument("--push-url", help="where to POST WeChat subscribe-message events")
    p.add_argument("--push-token")
    p.add_argument("--push-aes-key", help="EncodingAESKey; turns on safe mode")
    p.add_argument("--push-format", choices=("xml", "json"))
    return p


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the JSON config file (if any) with command-line flags."""
    options: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    options.setdefault("wechat", [])
    options.setdefault("alipay", [])
    if isinstance(options["wechat"], dict):
        options["wechat"] = [options["wechat"]]
    if isinstance(options["alipay"], dict):
        options["alipay"] = [options["alipay"]]
    options["host"] = args.host or options.get("host", "127.0.0.1")
    options["port"] = args.port or options.get("port", 8001)
    if args.wechat_appid:
        options["wechat"].append(
            {"appid": args.wechat_appid, "secret": args.wechat_secret, "templates": args.wechat_template}
        )
    if args.alipay_appid:
        if not args.alipay_app_public_key_file:
            raise SystemExit("--alipay-appid needs --alipay-app-public-key-file")
        options["alipay"].append(
            {
                "appid": args.alipay_appid,
                "app_public_key_file": str(args.alipay_app_public_key_file),
                "templates": args.alipay_template,
            }
        )
    if args.alipay_private_key_file:
        options["alipay_private_key_file"] = str(args.alipay_private_key_file)
    if args.push_url:
        options["push"] = {
            "url": args.push_url,
            "token": args.push_token,
            "encoding_aes_key": args.push_aes_key,
            "format": args.push_format or "xml",
        }
    return options


def build_sandbox(options: dict[str, Any]) -> Sandbox:
    """A configured (not yet started) Sandbox from merged options."""
    key_file = options.get("alipay_private_key_file")
    sandbox = Sandbox(
        host=options["host"],
        port=int(options["port"]),
        alipay_private_key_pem=Path(key_file).read_text() if key_file else None,
        log_requests=True,
    )
    for app in options["wechat"]:
        sandbox.register_wechat_app(app["appid"], app["secret"], app.get("templates", []), app.get("pages"))
    for app in options["alipay"]:
        pem = app.get("app_public_key_pem") or Path(app["app_public_key_file"]).read_text()
        sandbox.register_alipay_app(app["appid"], pem, app.get("templates", []), app.get("aes_key"))
    push = options.get("push")
    if push:
        sandbox.configure_wechat_push(
            push["url"],
            push["token"],
            push.get("encoding_aes_key"),
            push.get("format", "xml"),
            push.get("appid"),
        )
    return sandbox


def main(argv: list[str] | None = None) -> None:
    """Start the emulator and serve until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sandbox = build_sandbox(load_options(args))
    if args.alipay_public_key_out:
        args.alipay_public_key_out.write_text(sandbox.alipay_public_key_pem)
    sandbox.start()
    print(f"sandbox listening on {sandbox.url}", flush=True)
    print(f"  WECHAT_API_BASE_URL={sandbox.wechat_api_base_url}", flush=True)
    print(f"  ALIPAY_GATEWAY_URL={sandbox.alipay_gateway_url}", flush=True)
    if args.alipay_public_key_out:
        print(f"  ALIPAY_PUBLIC_KEY written to {args.alipay_public_key_out}", flush=True)
    else:
        print(f"  ALIPAY_PUBLIC_KEY (GET {sandbox.url}/_sandbox/alipay/public-key):", flush=True)
        print(sandbox.alipay_public_key_pem, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # A timed wait: the signal may be delivered to a server thread, so poll the flag.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
