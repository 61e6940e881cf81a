"""One WSGI app for both emulators plus the ``/_sandbox`` control API, and the ``Sandbox`` handle.

Usage in tests::

    sandbox = Sandbox().start()
    sandbox.register_wechat_app("wx123", "secret", templates=["T1"])
    code = sandbox.issue_wechat_login_code("openid-1")
    ...
    sandbox.stop()

The control endpoints take and return JSON (the body is parsed whatever its Content-Type, so a
plain ``curl -d '{...}'`` works). They have no authentication: bind the emulator to 127.0.0.1.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox.alipay import AlipayEmulator
from sandbox.alipay import create_blueprint as alipay_blueprint
from sandbox.push import PushDelivery, PushDispatcher, PushTarget
from sandbox.state import Clock, Fault, SandboxState, SentMessage
from sandbox.wechat import WeChatEmulator
from sandbox.wechat import create_blueprint as wechat_blueprint


class _QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class Sandbox:
    """A WeChat + Alipay emulator with its own state, served on one local port from a thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        alipay_private_key_pem: str | None = None,
        log_requests: bool = False,
    ):
        """``alipay_private_key_pem`` is the emulator's own signing key (generated when None)."""
        self.host, self.port = host, port
        self.log_requests = log_requests
        self.state = SandboxState(clock)
        self.wechat = WeChatEmulator(self.state)
        self.alipay = AlipayEmulator(self.state, alipay_private_key_pem)
        self.app = create_app(self)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Serve in a daemon thread (on a free port when ``port`` is 0); returns self."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self.state.stopping.clear()
        handler = WSGIRequestHandler if self.log_requests else _QuietRequestHandler
        self._server = make_server(self.host, self.port, self.app, threaded=True, request_handler=handler)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (later connections are refused) and stop push delivery."""
        self.state.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None
        if self.wechat.push is not None:
            self.wechat.push.close()
            self.wechat.push = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"

    @property
    def wechat_api_base_url(self) -> str:
        """What to configure as ``WECHAT_API_BASE_URL``."""
        return self.url + "/"

    @property
    def alipay_gateway_url(self) -> str:
        """What to configure as ``ALIPAY_GATEWAY_URL``."""
        return self.url + "/gateway.do"

    # --- apps and users -----------------------------------------------------------------------

    def register_wechat_app(
        self,
        appid: str,
        secret: str,
        templates: list[str] | tuple[str, ...] = (),
        pages: list[str] | None = None,
    ) -> None:
        """Register a mini-program: AppSecret, subscribe template ids, and (optionally) its valid pages."""
        self.wechat.register_app(appid, secret, templates, pages)

    def register_alipay_app(
        self, appid: str, app_public_key_pem: str, templates: list[str] | tuple[str, ...] = (),
        aes_key: str | None = None,
    ) -> None:
        """Register an Alipay app with the public half of its RSA2 key, its template ids and its
        content-encryption key (base64, the backend's ``ALIPAY_AES_KEY``)."""
        self.alipay.register_app(appid, app_public_key_pem, templates, aes_key)

    # --- identities and phones (R21) ------------------------------------------------------------

    def set_wechat_identity(self, openid: str, name: str | None, id_number: str | None = None) -> None:
        """The WeChat user's real-name identity; ``name=None`` makes them uncertified."""
        self.wechat.set_identity(openid, name, id_number)

    def set_wechat_phone(self, openid: str, phone: str | None) -> None:
        """The mobile number of the WeChat account."""
        self.wechat.set_phone(openid, phone)

    def issue_wechat_phone_code(self, openid: str) -> str:
        """The getPhoneNumber button's code (single use, 5 minutes)."""
        return self.wechat.issue_phone_code(openid)

    def issue_wechat_realname_code(self, openid: str) -> str:
        """The real-name consent page's ``extraData.code`` (single use, 5 minutes)."""
        return self.wechat.issue_realname_code(openid)

    def set_alipay_identity(self, user: str, name: str | None = None, cert_no: str | None = None,
                            certified: bool = True) -> None:
        """The Alipay user's real-name certification (``certified=False``: uncertified)."""
        self.alipay.set_identity(user, name, cert_no, certified)

    def set_alipay_phone(self, user: str, phone: str | None) -> None:
        """The mobile number of the Alipay account."""
        self.alipay.set_phone(user, phone)

    def alipay_phone_response(self, user: str, appid: str | None = None, refused: bool = False) -> str:
        """``res.response`` of ``my.getPhoneNumber`` (encrypted and signed)."""
        return self.alipay.phone_response(user, appid, refused=refused)

    @property
    def alipay_public_key_pem(self) -> str:
        """The emulator's public key: configure it as ``ALIPAY_PUBLIC_KEY`` to verify its replies."""
        return self.alipay.public_key_pem

    def issue_wechat_login_code(
        self, openid: str, unionid: str | None = None, appid: str | None = None
    ) -> str:
        """A fresh ``wx.login()`` code for ``openid`` (single use, 5 minutes)."""
        return self.wechat.issue_login_code(openid, unionid, appid)

    def issue_alipay_auth_code(
        self,
        user_id: str | None = None,
        open_id: str | None = None,
        union_id: str | None = None,
        appid: str | None = None,
    ) -> str:
        """A fresh ``my.getAuthCode`` code; the exchange returns whichever ids are given here."""
        return self.alipay.issue_auth_code(user_id, open_id, union_id, appid)

    def grant_wechat_consent(
        self, openid: str, template_id: str, mode: str = "one_time", count: int = 1
    ) -> dict[str, Any]:
        """Record an "accept" of ``template_id`` (``count`` one-time credits, or long-term)."""
        return self.wechat.grant_consent(openid, template_id, mode, count)

    def revoke_wechat_consent(self, openid: str, template_id: str) -> None:
        """The user switches the template off in settings (pushes a change event)."""
        self.wechat.revoke_consent(openid, template_id)

    def wechat_consent(self, openid: str, template_id: str) -> dict[str, Any]:
        """``{"one_time_credits": n, "long_term": bool}`` for this user and template."""
        return self.wechat.consent(openid, template_id)

    def grant_alipay_consent(
        self, user: str, template_id: str, mode: str = "one_time", count: int = 1
    ) -> dict[str, Any]:
        """Record an "accept" for ``user`` (the user_id or open_id the send will name)."""
        return self.alipay.grant_consent(user, template_id, mode, count)

    def revoke_alipay_consent(self, user: str, template_id: str) -> None:
        """The user turns the template off: later sends get the no-consent error."""
        self.alipay.revoke_consent(user, template_id)

    def alipay_consent(self, user: str, template_id: str) -> dict[str, Any]:
        """``{"one_time_credits": n, "long_term": bool}`` for this user and template."""
        return self.alipay.consent(user, template_id)

    # --- records, faults, clock ---------------------------------------------------------------

    def reset(self) -> None:
        """Back to a clean world between tests: no users, codes, consent, messages, faults or pushes.

        Registered apps, issued access tokens, the push target and the clock (which only moves
        forward) are kept.
        """
        self.wechat.reset()
        self.alipay.reset()
        self.state.clear_faults()
        self.state.clear_sent()
        if self.wechat.push is not None:
            self.wechat.push.flush()
            self.wechat.push.deliveries.clear()

    def sent_messages(
        self, platform: str | None = None, to: str | None = None, template_id: str | None = None
    ) -> list[SentMessage]:
        """Messages the platforms accepted, oldest first, optionally filtered."""
        return self.state.sent_messages(platform, to, template_id)

    def clear_sent_messages(self) -> None:
        """Forget the messages recorded so far."""
        self.state.clear_sent()

    def inject_fault(
        self,
        api: str,
        *,
        errcode: int | str | None = None,
        errmsg: str | None = None,
        sub_code: str | None = None,
        http_status: int | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``api`` fail.

        ``api`` is ``wechat.token``, ``wechat.stable_token``, ``wechat.jscode2session``,
        ``wechat.subscribe_send`` or an Alipay method name. ``delay`` seconds pass first; then the
        call answers ``http_status``, or the platform error ``errcode`` (Alipay: ``code`` plus
        ``sub_code``), or, with only a delay, its normal reply.
        """
        self.state.inject_fault(Fault(api, times, errcode, errmsg, sub_code, http_status, delay))

    def clear_faults(self) -> None:
        """Drop queued faults and bring both platforms back up."""
        self.state.clear_faults()

    def set_down(self, platform: str, down: bool = True) -> None:
        """While down, every call to ``platform`` ('wechat'|'alipay') gets HTTP 502."""
        self.state.set_down(platform, down)

    def call_count(self, api: str) -> int:
        """How many calls of ``api`` (same names as ``inject_fault``) reached the emulator."""
        return self.state.call_count(api)

    def advance_clock(self, seconds: float) -> float:
        """Move the emulated platforms' time forward; returns the new time."""
        return self.state.clock.advance(seconds)

    def now(self) -> float:
        """The emulated platforms' current time (epoch seconds)."""
        return self.state.clock.now()

    # --- message push -------------------------------------------------------------------------

    def configure_wechat_push(
        self,
        url: str,
        token: str,
        encoding_aes_key: str | None = None,
        fmt: str = "xml",
        appid: str | None = None,
        original_id: str = "gh_sandbox00000",
        wrapped: bool = False,
    ) -> None:
        """Push subscribe-message events to ``url``: popup on consent, change on revoke, sent on send.

        ``encoding_aes_key`` switches on safe mode; ``appid`` defaults to the only registered app.
        """
        target = PushTarget(
            url, token, self.wechat.default_appid(appid), encoding_aes_key, fmt, original_id, wrapped
        )
        if self.wechat.push is not None:
            self.wechat.push.close()
        self.wechat.push = PushDispatcher(target)

    def flush_pushes(self, timeout: float = 5.0) -> bool:
        """Wait until all queued pushes were attempted; False on timeout."""
        return self.wechat.push.flush(timeout) if self.wechat.push is not None else True

    def push_deliveries(self) -> list[PushDelivery]:
        """Outcomes of the pushes made so far (HTTP status or error per event)."""
        return list(self.wechat.push.deliveries) if self.wechat.push is not None else []

    def summary(self) -> dict[str, Any]:
        """Registered apps, message counts, call counts and the emulated time."""
        with self.state.lock:
            return {
                "url": self.url,
                "now": self.now(),
                "wechat_apps": self.wechat.appids(),
                "alipay_apps": self.alipay.appids(),
                "sent_messages": len(self.state.sent_messages()),
                "calls": self.state.call_counts(),
                "down": sorted(p for p in ("wechat", "alipay") if self.state.is_down(p)),
            }


def create_app(sandbox: Sandbox) -> Flask:
    """The emulators' routes plus ``/_sandbox/...`` JSON control endpoints for ``sandbox``."""
    app = Flask("sandbox")
    app.json.ensure_ascii = False
    app.register_blueprint(wechat_blueprint(sandbox.wechat))
    app.register_blueprint(alipay_blueprint(sandbox.alipay))

    def body() -> dict[str, Any]:
        data = request.get_json(force=True, silent=True)
        if data is None and request.get_data():
            raise ValueError("the body must be a JSON object")
        if not isinstance(data or {}, dict):
            raise ValueError("the body must be a JSON object")
        return data or {}

    def required(data: dict[str, Any], *names: str) -> list[Any]:
        missing = [n for n in names if data.get(n) in (None, "")]
        if missing:
            raise ValueError(f"missing: {', '.join(missing)}")
        return [data[n] for n in names]

    @app.errorhandler(ValueError)
    @app.errorhandler(TypeError)
    def bad_request(exc: Exception):
        return jsonify(error=str(exc)), 400

    @app.get("/_sandbox/state")
    def state():
        """Registered apps, counts and the emulated time."""
        return jsonify(sandbox.summary())

    @app.post("/_sandbox/wechat/apps")
    def wechat_app():
        """Register a mini-program {appid, secret, templates?, pages?}."""
        data = body()
        appid, secret = required(data, "appid", "secret")
        sandbox.register_wechat_app(appid, secret, data.get("templates", []), data.get("pages"))
        return jsonify(appid=appid), 201

    @app.post("/_sandbox/wechat/login-code")
    def wechat_login_code():
        """Issue a wx.login() code {openid, unionid?, appid?} → {code}."""
        data = body()
        (openid,) = required(data, "openid")
        return jsonify(code=sandbox.issue_wechat_login_code(openid, data.get("unionid"), data.get("appid")))

    @app.post("/_sandbox/wechat/consent")
    def wechat_consent():
        """Grant consent {openid, template_id, mode?, count?} → the consent now held."""
        data = body()
        openid, template_id = required(data, "openid", "template_id")
        return jsonify(
            sandbox.grant_wechat_consent(
                openid, template_id, data.get("mode", "one_time"), int(data.get("count", 1))
            )
        )

    @app.post("/_sandbox/wechat/consent/revoke")
    def wechat_consent_revoke():
        """Revoke consent {openid, template_id} (pushes a change event)."""
        openid, template_id = required(body(), "openid", "template_id")
        sandbox.revoke_wechat_consent(openid, template_id)
        return jsonify(sandbox.wechat_consent(openid, template_id))

    @app.post("/_sandbox/wechat/push-target")
    def wechat_push_target():
        """Push events to {url, token, encoding_aes_key?, format?, appid?, wrapped?}."""
        data = body()
        url, token = required(data, "url", "token")
        sandbox.configure_wechat_push(
            url,
            token,
            data.get("encoding_aes_key"),
            data.get("format", "xml"),
            data.get("appid"),
            data.get("original_id", "gh_sandbox00000"),
            bool(data.get("wrapped", False)),
        )
        return jsonify(url=url)

    @app.post("/_sandbox/alipay/apps")
    def alipay_app():
        """Register an Alipay app {appid, app_public_key_pem, templates?}."""
        data = body()
        appid, pem = required(data, "appid", "app_public_key_pem")
        sandbox.register_alipay_app(appid, pem, data.get("templates", []))
        return jsonify(appid=appid), 201

    @app.get("/_sandbox/alipay/public-key")
    def alipay_public_key():
        """The emulator's public key, to configure as ALIPAY_PUBLIC_KEY."""
        return jsonify(public_key_pem=sandbox.alipay_public_key_pem)

    @app.post("/_sandbox/alipay/auth-code")
    def alipay_auth_code():
        """Issue a my.getAuthCode code {user_id?, open_id?, union_id?, appid?} → {code}."""
        data = body()
        code = sandbox.issue_alipay_auth_code(
            data.get("user_id"), data.get("open_id"), data.get("union_id"), data.get("appid")
        )
        return jsonify(code=code)

    @app.post("/_sandbox/alipay/consent")
    def alipay_consent():
        """Grant consent {user, template_id, mode?, count?} → the consent now held."""
        data = body()
        user, template_id = required(data, "user", "template_id")
        return jsonify(
            sandbox.grant_alipay_consent(
                user, template_id, data.get("mode", "one_time"), int(data.get("count", 1))
            )
        )

    @app.post("/_sandbox/wechat/identity")
    def wechat_identity():
        """Set the real-name identity {openid, name?, id_number?} (without name: uncertified)."""
        data = body()
        (openid,) = required(data, "openid")
        sandbox.set_wechat_identity(openid, data.get("name"), data.get("id_number"))
        return jsonify(openid=openid)

    @app.post("/_sandbox/wechat/phone")
    def wechat_phone():
        """Set the account's phone {openid, phone}."""
        data = body()
        openid, phone = required(data, "openid", "phone")
        sandbox.set_wechat_phone(openid, phone)
        return jsonify(openid=openid)

    @app.post("/_sandbox/wechat/phone-code")
    def wechat_phone_code():
        """The getPhoneNumber button's code {openid} → {code}."""
        (openid,) = required(body(), "openid")
        return jsonify(code=sandbox.issue_wechat_phone_code(openid))

    @app.post("/_sandbox/wechat/realname-code")
    def wechat_realname_code():
        """The real-name consent page's code {openid} → {code}."""
        (openid,) = required(body(), "openid")
        return jsonify(code=sandbox.issue_wechat_realname_code(openid))

    @app.post("/_sandbox/alipay/identity")
    def alipay_identity():
        """Set the certification {user, name?, cert_no?, certified? (default true)}."""
        data = body()
        (user,) = required(data, "user")
        sandbox.set_alipay_identity(user, data.get("name"), data.get("cert_no"), bool(data.get("certified", True)))
        return jsonify(user=user)

    @app.post("/_sandbox/alipay/phone")
    def alipay_phone():
        """Set the account's phone {user, phone}."""
        data = body()
        user, phone = required(data, "user", "phone")
        sandbox.set_alipay_phone(user, phone)
        return jsonify(user=user)

    @app.post("/_sandbox/alipay/phone-response")
    def alipay_phone_response():
        """``my.getPhoneNumber``'s res.response {user, appid?, refused?} → {response}."""
        data = body()
        (user,) = required(data, "user")
        return jsonify(response=sandbox.alipay_phone_response(user, data.get("appid"), bool(data.get("refused"))))

    @app.post("/_sandbox/alipay/consent/revoke")
    def alipay_consent_revoke():
        """Revoke consent {user, template_id}."""
        user, template_id = required(body(), "user", "template_id")
        sandbox.revoke_alipay_consent(user, template_id)
        return jsonify(sandbox.alipay_consent(user, template_id))

    @app.get("/_sandbox/messages")
    def messages():
        """Messages delivered so far, filtered by ?platform=&to=&template_id=."""
        found = sandbox.sent_messages(
            request.args.get("platform"), request.args.get("to"), request.args.get("template_id")
        )
        return jsonify(count=len(found), messages=[m.to_dict() for m in found])

    @app.delete("/_sandbox/messages")
    def clear_messages():
        """Forget delivered messages."""
        sandbox.clear_sent_messages()
        return "", 204

    @app.post("/_sandbox/faults")
    def faults():
        """Queue a fault {api, errcode?, errmsg?, sub_code?, http_status?, delay?, times?}."""
        data = body()
        (api,) = required(data, "api")
        sandbox.inject_fault(
            api,
            errcode=data.get("errcode"),
            errmsg=data.get("errmsg"),
            sub_code=data.get("sub_code"),
            http_status=data.get("http_status"),
            delay=float(data.get("delay", 0)),
            times=int(data.get("times", 1)),
        )
        return jsonify(api=api), 201

    @app.post("/_sandbox/reset")
    def reset():
        """Forget users, codes, consent, messages, faults and push results."""
        sandbox.reset()
        return "", 204

    @app.delete("/_sandbox/faults")
    def clear_faults():
        """Drop queued faults and bring both platforms up."""
        sandbox.clear_faults()
        return "", 204

    @app.post("/_sandbox/down")
    def down():
        """Take a platform down or up {platform, down?}."""
        data = body()
        (platform,) = required(data, "platform")
        sandbox.set_down(platform, bool(data.get("down", True)))
        return jsonify(sandbox.summary())

    @app.post("/_sandbox/clock/advance")
    def advance_clock():
        """Move the emulated time forward {seconds} → {now}."""
        (seconds,) = required(body(), "seconds")
        return jsonify(now=sandbox.advance_clock(float(seconds)))

    @app.get("/_sandbox/pushes")
    def pushes():
        """Outcomes of the WeChat pushes made so far."""
        sandbox.flush_pushes(timeout=2.0)
        return jsonify(deliveries=[vars(d) for d in sandbox.push_deliveries()])

    return app
