"""Sign an institution request (SPEC §5) so that it can be sent with curl. Standard library only, so an
institution's developer can copy it as it is.

    python3 scripts/sign_request.py METHOD PATH [BODY_FILE] > sig.txt
    curl -X METHOD -H @sig.txt [-H 'Content-Type: application/json' --data-binary @BODY_FILE] http://HOST$PATH

It prints the four headers, one per line, for ``curl -H @file``: ``X-Inst-Code``, ``X-Timestamp`` (now),
``X-Nonce`` (fresh) and ``X-Signature`` = hex HMAC-SHA256(secret, METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\n
sha256hex(body)). PATH is the full path from ``/api/v1`` with its ``?query``, exactly as requested;
the body is signed byte for byte, so send it with ``--data-binary`` (``-d`` drops newlines). A
signature is good for 300 seconds and once. The institution code and secret come from
``$INST_CODE`` and ``$INST_SECRET`` (default: the demo hospital H5326001 and its demo secret).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
import time

DEMO_CODE, DEMO_SECRET = "H5326001", "demo-secret-H5326001-not-for-production"


def signed_headers(code: str, secret: str, method: str, path: str, body: bytes, timestamp: int | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    message = f"{method.upper()}\n{path}\n{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()
    signature = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {"X-Inst-Code": code, "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": signature}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    method, path = argv[0], argv[1]
    body = b""
    if len(argv) == 3:
        with open(argv[2], "rb") as file:
            body = file.read()
    headers = signed_headers(os.environ.get("INST_CODE", DEMO_CODE), os.environ.get("INST_SECRET", DEMO_SECRET),
                             method, path, body)
    for name, value in headers.items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
