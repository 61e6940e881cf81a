"""State shared by the WeChat and Alipay emulators of one ``Sandbox``: clock, faults, records.

Nothing here is module-global: every ``Sandbox`` builds its own ``SandboxState``, so tests can run
many emulators side by side. All mutation happens under ``SandboxState.lock``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

WECHAT_APIS = frozenset(
    {"wechat.token", "wechat.stable_token", "wechat.jscode2session", "wechat.subscribe_send",
     "wechat.getuserphonenumber", "wechat.checkrealnameinfo"}
)
ALIPAY_APIS = frozenset({"alipay.system.oauth.token", "alipay.open.app.mini.templatemessage.send",
                         "alipay.user.info.share"})
PLATFORMS = ("wechat", "alipay")


class Clock:
    """Wall-clock time plus an offset that tests move forward with ``advance``."""

    def __init__(self, start: float | None = None):
        self._base = time.time() if start is None else float(start)
        self._started = time.monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the epoch, as the emulated platforms see it."""
        with self._lock:
            return self._base + (time.monotonic() - self._started) + self._offset

    def advance(self, seconds: float) -> float:
        """Move time forward (tokens and codes expire); returns the new ``now()``."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()


@dataclass
class Fault:
    """What the next ``times`` calls of one API do instead of (or before) their normal work."""

    api: str
    times: int = 1
    errcode: int | str | None = None
    errmsg: str | None = None
    sub_code: str | None = None
    http_status: int | None = None
    delay: float = 0.0


@dataclass
class SentMessage:
    """One message the emulated platform accepted for delivery."""

    platform: str
    msgid: str
    appid: str
    to: str
    template_id: str
    data: dict[str, str]
    page: str | None
    sent_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able data."""
        return asdict(self)


class SandboxState:
    """Lock, clock, fault board, call counters and the record of sent messages."""

    def __init__(self, clock: Clock | None = None):
        self.lock = threading.RLock()
        self.clock = clock or Clock()
        self.stopping = threading.Event()
        self._faults: list[Fault] = []
        self._down: set[str] = set()
        self._calls: Counter[str] = Counter()
        self._sent: list[SentMessage] = []
        # A WeChat msgid is a 64-bit integer; start at a random 19-digit value like real ones.
        self._next_msgid = 1_800_000_000_000_000_000 + secrets.randbits(48)

    # --- faults -------------------------------------------------------------------------------

    def inject_fault(self, fault: Fault) -> None:
        """Queue ``fault`` for the next calls of its API (after any fault already queued for it)."""
        if fault.api not in WECHAT_APIS | ALIPAY_APIS:
            raise ValueError(f"unknown api {fault.api!r}; known: {sorted(WECHAT_APIS | ALIPAY_APIS)}")
        if fault.times < 1:
            raise ValueError("times must be at least 1")
        if fault.errcode is None and fault.http_status is None and not fault.delay:
            raise ValueError("a fault needs errcode, http_status or delay")
        if fault.api in WECHAT_APIS and fault.errcode is not None:
            fault.errcode = int(fault.errcode)  # WeChat errcodes are integers; fail here, not mid-request
        with self.lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Drop all queued faults and bring every platform back up."""
        with self.lock:
            self._faults.clear()
            self._down.clear()

    def take_fault(self, api: str) -> Fault | None:
        """Count one call of ``api`` and consume one use of the first fault queued for it."""
        with self.lock:
            self._calls[api] += 1
            for fault in self._faults:
                if fault.api == api:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def set_down(self, platform: str, down: bool = True) -> None:
        """Switch ``platform`` ('wechat'|'alipay') to answering every call with HTTP 502, or back."""
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}")
        with self.lock:
            (self._down.add if down else self._down.discard)(platform)

    def is_down(self, platform: str) -> bool:
        """Whether ``platform`` is switched to "down"."""
        with self.lock:
            return platform in self._down

    def call_count(self, api: str) -> int:
        """Calls of ``api`` that reached the emulator (calls refused while "down" are not counted)."""
        with self.lock:
            return self._calls[api]

    def call_counts(self) -> dict[str, int]:
        """``call_count`` of every API called so far."""
        with self.lock:
            return dict(self._calls)

    def wait(self, seconds: float) -> None:
        """Sleep for an injected delay, but wake up at once when the server stops."""
        self.stopping.wait(seconds)

    # --- records ------------------------------------------------------------------------------

    def new_msgid(self) -> str:
        """A new unique 64-bit message id, as a decimal string."""
        with self.lock:
            self._next_msgid += 1
            return str(self._next_msgid)

    def record(self, message: SentMessage) -> None:
        """Keep ``message`` as delivered."""
        with self.lock:
            self._sent.append(message)

    def sent_messages(
        self, platform: str | None = None, to: str | None = None, template_id: str | None = None
    ) -> list[SentMessage]:
        """Delivered messages, oldest first, filtered by whichever arguments are given."""
        with self.lock:
            return [
                m
                for m in self._sent
                if (platform is None or m.platform == platform)
                and (to is None or m.to == to)
                and (template_id is None or m.template_id == template_id)
            ]

    def clear_sent(self) -> None:
        """Forget the delivered messages."""
        with self.lock:
            self._sent.clear()
