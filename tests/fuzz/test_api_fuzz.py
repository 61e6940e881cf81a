"""Fuzzing the API against its own OpenAPI document with schemathesis (issue 10).

Every operation in the document (so operations added later are covered without a change here)
is called as each kind of caller — a verified mini-program user, each staff role (window, admin,
auditor), a designated institution (a WSGI hook signs each request exactly as an institution
would, over the bytes actually sent) and nobody — with generated valid and invalid input, then a
stateful run follows the document's links (create a binding, then read, limit, confirm, unbind it;
upload a document, then fetch it; settle, then read and refund). Every answer must be documented:
no 5xx, the status listed for the operation, the body valid against the documented schema.

Runs on PostgreSQL (with Redis when configured); marked ``slow`` so the SQLite pass of CI skips it.
The budget per operation and role is ``FUZZ_EXAMPLES`` (default 40): about 12,000 requests in
CI. A failure prints the Hypothesis seed; rerun with ``FUZZ_SEED=<seed>``.
"""

from __future__ import annotations

import io
import os
import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Flaky, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import stateful as schemathesis_stateful
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.wrappers import Request

from app import create_app
from app.demo import DEMO_INSTITUTION_SECRET, OWNER, PARENT
from scripts.sign_request import signed_headers
from tests.binding_helpers import bind_at_window, sign_in
from tests.conftest import _clean
from tests.helpers import sign_in_wechat

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
STATEFUL = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "150"))
SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
ROLES = ("user", "window", "admin", "auditor", "institution", "anonymous")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ROLE_HEADER = "HTTP_X_FUZZ_ROLE"
# What a failed check raises: schemathesis's FailureGroup is a BaseExceptionGroup, not an Exception.
FAILED = (Exception, FailureGroup)
_ID_PART = re.compile(r"/(?!v1(?:/|$))[^/]*[0-9][^/]*")  # a path part with a digit, but /api/v1


class SigningHook:
    """WSGI hook in front of the app: counts requests and signs institution requests as the demo
    hospital does (SPEC §5), over the exact path, query and body bytes that arrive."""

    def __init__(self, app: Any, code: str, secret: str):
        self.app, self.code, self.secret = app, code, secret
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.created: dict[str, int] = {}  # 201 answers by operation (ids in the path as {})

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.requests += 1
        role = environ.pop(ROLE_HEADER, None)
        if role == "institution":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            request = Request(environ)
            query = request.query_string.decode("latin-1")
            path = request.path + (f"?{query}" if query else "")
            for name, value in signed_headers(self.code, self.secret, request.method, path, body).items():
                environ["HTTP_" + name.upper().replace("-", "_")] = value

        def counting_start_response(status: str, headers: Any, *args: Any) -> Any:
            code = int(status.split()[0])
            self.by_status[code] = self.by_status.get(code, 0) + 1
            if code == 201:
                operation = environ["REQUEST_METHOD"] + " " + _ID_PART.sub("/{}", environ.get("PATH_INFO", ""))
                self.created[operation] = self.created.get(operation, 0) + 1
            return start_response(status, headers, *args)

        return self.app(environ, counting_start_response)


@pytest.fixture(scope="module")
def fuzz_env(postgres, make_config, sandbox):
    if not postgres:
        pytest.skip("fuzzing runs on PostgreSQL (set TEST_DATABASE_URL)")
    app = create_app(make_config(RATE_LIMIT_PER_USER="1000000/60", RATE_LIMIT_PER_IP="1000000/60"))
    with app.app_context():
        from app import demo
        from app.extensions import app_session

        with app_session() as session:
            staff = demo.seed_demo(session, app.extensions["domain"].pii, datetime.now(UTC))
        client = app.test_client()
        user = sign_in(client, sandbox, OWNER)
        # A live family, so that reads, vouchers and settlements have something real to find.
        assert bind_at_window(client, staff["window1"], OWNER, PARENT, "parent").status_code == 201
    hook = SigningHook(app.wsgi_app, "H5326001", DEMO_INSTITUTION_SECRET)
    app.wsgi_app = hook  # type: ignore[method-assign]
    tokens = {"user": user, **{role: staff[f"{role}1"] for role in ("window", "admin", "auditor")}}

    def throwaway_user() -> str:
        """A token of its own for logout, which revokes the token it is called with."""
        return sign_in_wechat(client, sandbox)["access_token"]

    tokens_for = _TokensFor(tokens, throwaway_user, lambda: sign_in(client, sandbox, OWNER))
    yield app, hook, tokens_for
    print(f"\nfuzz: {hook.requests} requests, by status {dict(sorted(hook.by_status.items()))}, seed {SEED}")
    _clean(app)
    app.extensions["db.engine"].dispose()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_env):
    app, _hook, _tokens = fuzz_env
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


class _TokensFor:
    """The callers' tokens; ``POST /auth/logout`` gets a throwaway user each time, or it would sign
    the fuzzing user out for the rest of the run (and every later user request would be a 401).
    ``sign_in_again``: the fuzzing user as a new, verified sign-in — staff operations fuzzed with
    generated ids (``POST /staff/identity-links/{user_id}/end``) can end the current one's link,
    after which every write of the user is a 403."""

    def __init__(self, tokens: dict[str, str], throwaway: Any, verified_user: Any):
        self.tokens, self.throwaway, self.verified_user = tokens, throwaway, verified_user

    def sign_in_again(self) -> None:
        self.tokens["user"] = self.verified_user()

    def __call__(self, path: str) -> dict[str, str]:
        if path == "/api/v1/auth/logout":
            return {**self.tokens, "user": self.throwaway()}
        return self.tokens


def headers_for(role: str, tokens: dict[str, str]) -> dict[str, str]:
    if role in tokens:
        return {"Authorization": f"Bearer {tokens[role]}", "X-Fuzz-Role": role}
    return {"X-Fuzz-Role": role}


def _fuzz_operation(operation: Any, mode: GenerationMode, tokens_for: _TokensFor, examples: int) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @seed(SEED)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True,
              phases=[Phase.explicit, Phase.generate], database=None)
    def run(case: Any) -> None:
        for role in ROLES:  # the same generated request from each kind of caller
            case.call_and_validate(headers=headers_for(role, tokens_for(operation.path)), checks=CHECKS)

    run()


def test_every_operation_as_every_caller(fuzz_schema, fuzz_env):
    _app, hook, tokens_for = fuzz_env
    failures: list[str] = []
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 45
    for operation in operations:
        for mode, share in ((GenerationMode.POSITIVE, 0.6), (GenerationMode.NEGATIVE, 0.4)):
            try:
                _fuzz_operation(operation, mode, tokens_for, max(1, round(EXAMPLES * share)))
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no parameters, no body
            except FAILED as failure:  # every operation is tried; all failures reported
                failures.append(f"{operation.label} ({mode.value}): {failure}")
    print(f"\nfuzz: {len(operations)} operations, {hook.requests} requests so far, {len(failures)} failing, "
          f"seed {SEED}")
    assert not failures, f"seed {SEED} (rerun with FUZZ_SEED={SEED}):\n" + "\n\n".join(failures)


def role_for(path: str) -> str:
    """The caller a real client would be for this operation (links cross callers: a user's voucher
    is settled by an institution, a user's binding reviewed by staff)."""
    if path.startswith("/api/v1/institution/"):
        return "institution"
    if path.startswith("/api/v1/staff/"):
        return "admin"
    return "user"


def _link_sources(raw_schema: dict[str, Any]) -> set[str]:
    """The operations whose answers the document links from (``POST /api/v1/bindings``…)."""
    return {f"{method.upper()} {path}" for path, item in raw_schema["paths"].items()
            for method, operation in item.items() if isinstance(operation, dict)
            and any(response.get("links") for response in operation.get("responses", {}).values())}


def _state_machine(schema: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The schema's state machine, with every operation the document links from as an entry point.

    Schemathesis starts flows only from operations it guesses will succeed with generated data, and
    it guesses from field names: ``proof_document_ids`` names a "ProofDocument" and ``person_id`` a
    "Person" that no operation creates, so it never calls POST /bindings, POST /staff/bindings or
    POST /vouchers — and no flow would ever bind, issue a voucher, settle it or refund it. The
    document's links say where flows start; the guess is only for operations it does not name."""
    sources = _link_sources(schema.raw_schema)
    guess = schemathesis_stateful.is_likely_root_transition

    def likely_root(operation: Any, *args: Any, **kwargs: Any) -> bool:
        return operation.label in sources or guess(operation, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(schemathesis_stateful, "is_likely_root_transition", likely_root)
        machine = schema.as_state_machine()
    missing = sources - machine._root_labels
    assert not missing, f"operations the document links from that no flow starts with: {sorted(missing)}"
    return machine


def run_flows(machine: Any, call_kwargs: Any, budget: int, first_seed: int) -> dict[str, int]:
    """Run ``budget`` flows of the state machine, each request made with ``call_kwargs(case)``.

    The flows run against one database that every step changes, and the values the links carry
    (binding ids, voucher codes…) and the statuses that allow a link come from it. Hypothesis keeps
    a tree of what each sequence of choices drew; the same choices meeting another database state
    draw something else, and it stops with ``Flaky`` — no answer of the service was wrong (the
    schemathesis runner itself counts such a suite as passed and carries on). So: an answer that
    fails a check is kept and reported with the seed; a ``Flaky`` without one starts a new run,
    until the budget of flows is spent."""
    first_failures: list[str] = []
    flows = {"done": 0, "restarts": 0}

    class Flows(machine):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            super().setup()
            flows["done"] += 1

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return call_kwargs(case)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            except FAILED as failure:
                first_failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {failure}\n"
                                      f"request: {case.as_curl_command()}\nresponse: {response.text[:2000]}")
                raise

    run_seed = first_seed
    while flows["done"] < budget:
        try:
            seed(run_seed)(Flows).run(settings=settings(
                max_examples=budget - flows["done"], deadline=None, suppress_health_check=list(HealthCheck),
                stateful_step_count=12, database=None, print_blob=True, phases=[Phase.explicit, Phase.generate]))
            break
        except FAILED as failure:
            if first_failures:
                raise AssertionError(f"seed {first_seed} (rerun with FUZZ_SEED={first_seed}), first failing answer:\n"
                                     + first_failures[0]) from failure
            if not isinstance(failure, Flaky) or flows["restarts"] >= 25:
                failure.add_note(f"seed {first_seed}: rerun with FUZZ_SEED={first_seed}")
                raise
            flows["restarts"] += 1
            run_seed = (run_seed * 6364136223846793005 + 1442695040888963407) % 2**32
    return flows


def test_stateful_flows_follow_the_documents_links(fuzz_schema, fuzz_env, monkeypatch):
    _app, hook, tokens_for = fuzz_env
    links = sum(len(response.get("links", {})) for item in fuzz_schema.raw_schema["paths"].values()
                for operation in item.values() if isinstance(operation, dict)
                for response in operation.get("responses", {}).values())
    assert links >= 15

    def call_kwargs(case: Any) -> dict[str, Any]:
        path = case.operation.path
        return {"headers": headers_for(role_for(path), tokens_for(path))}

    tokens_for.sign_in_again()  # the stateless run may have ended the user's link
    before, created_before = hook.requests, dict(hook.created)
    flows = run_flows(_state_machine(fuzz_schema, monkeypatch), call_kwargs, STATEFUL, SEED)
    print(f"\nfuzz (stateful): {flows['done']} flows, {hook.requests - before} requests along {links} links, "
          f"{flows['restarts']} restarts after Flaky, seed {SEED}")
    created = {operation: count - created_before.get(operation, 0) for operation, count in hook.created.items()
               if count > created_before.get(operation, 0)}
    print(f"fuzz (stateful): created {dict(sorted(created.items()))}")
