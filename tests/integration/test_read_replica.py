"""Record reads on a real streaming replica (issue 14).

The test makes its own PostgreSQL 15 primary (initdb into a temporary directory, ``wal_level=replica``)
on a free port and a replica of it with ``pg_basebackup -R`` on another, both as the ``postgres`` OS
user, and stops both by PID. It never touches the machine's shared server. It checks that record
reads go to the replica, that a caller's own writes are read back from the primary, that a lagging,
stalled (its WAL receiver stopped with SIGSTOP: it still says "streaming") or stopped replica sends
reads to the primary, and that nothing is written to the replica.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from app.replica import PRIMARY_SQL, READS, REPLICA_SQL
from models import Base
from tests.helpers import bearer
from tests.money_helpers import CHILD, NEIGHBOUR, OWNER, SPOUSE, fresh, issue, make_binding, person_id, settle, sign_in
from tests.ops_helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG_BIN = Path(os.environ.get("PG_SERVER_BIN", "/usr/lib/postgresql/15/bin"))
MAX_LAG = 1.0


def _as_postgres(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True,
                          text=True, **kwargs)


class Cluster:
    def __init__(self, data: Path, port: int, sockets: Path) -> None:
        self.data, self.port, self.sockets = data, port, sockets

    def start(self) -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data.parent / f"{self.port}.log"),
                     "-w", "-t", "60", "-o", f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1",
                     "start")

    @property
    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.exists() else None

    def stop(self) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown (a throwaway cluster), by the postmaster's PID
        except ProcessLookupError:
            return
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def url(self, database: str = "copay") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[Cluster, Cluster]]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip(f"needs root, runuser and PostgreSQL server binaries in {PG_BIN} to make a private cluster")
    # Not under pytest's tmp dir: that one is private to root and the postgres user must reach it.
    base = Path(tempfile.mkdtemp(prefix="copay-pg-replica-"))
    shutil.chown(base, "postgres", "postgres")
    sockets = base / "sockets"
    sockets.mkdir()
    shutil.chown(sockets, "postgres", "postgres")
    primary = Cluster(base / "primary", free_port(), sockets)
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust",
                 "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
    with (primary.data / "postgresql.conf").open("a") as conf:
        conf.write("wal_level = replica\nmax_wal_senders = 4\nfsync = off\nsynchronous_commit = off\n"
                   "full_page_writes = off\nshared_buffers = 32MB\nmax_connections = 60\n")
    replica = Cluster(base / "replica", free_port(), sockets)
    started: list[Cluster] = []
    try:
        primary.start()
        started.append(primary)
        _as_postgres(str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                     "-c", "CREATE DATABASE copay")
        engine = create_engine(primary.url())
        Base.metadata.create_all(engine)
        engine.dispose()
        _as_postgres(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                     "-D", str(replica.data), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast")
        replica.start()
        started.append(replica)
        yield primary, replica
    finally:
        for cluster in reversed(started):
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def setup(clusters, make_app, sandbox):
    primary, replica = clusters
    if replica.pid is None:
        replica.start()
    replica_app = make_app(DATABASE_URL=primary.url(), DATABASE_REPLICA_URL=replica.url(),
                           REPLICA_MAX_LAG_SECONDS=MAX_LAG)
    statements: dict[str, list[str]] = {"replica": [], "primary": []}
    for name, engine in (("replica", replica_app.extensions["db.replica"].engine),
                         ("primary", replica_app.extensions["db.engine"])):
        event.listen(engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_a, _n=name: statements[_n].append(statement))
    with replica_app.app_context():
        _truncate(replica_app)
        from app import demo as demo_data
        from app.extensions import app_session

        with app_session() as session:
            demo_data.seed_demo(session, replica_app.extensions["domain"].pii, __import__("datetime").datetime.now(
                __import__("datetime").UTC))
        fresh(replica_app)
        make_binding(replica_app, OWNER, CHILD, "child")
        client = replica_app.test_client()
        token = sign_in(client, sandbox, OWNER)
        yield replica_app, client, token, statements, primary, replica
    replica_app.extensions["db.replica"].engine.dispose()


class WalReceiver:
    """The replica's WAL receiver process, stopped (SIGSTOP) and resumed (SIGCONT) by its PID: a stalled
    link. It still reads "streaming" in pg_stat_wal_receiver, and the replica has replayed all it received."""

    def __init__(self, app) -> None:
        self.engine = app.extensions["db.replica"].engine
        self.stopped: list[int] = []

    def stop(self) -> None:
        with self.engine.connect() as conn:
            pid = conn.scalar(text("SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'"))
        assert pid, "the replica has no streaming WAL receiver"
        os.kill(pid, signal.SIGSTOP)
        self.stopped.append(pid)

    def resume(self) -> None:
        while self.stopped:
            with suppress(ProcessLookupError):
                os.kill(self.stopped.pop(), signal.SIGCONT)

    def looks_fine(self) -> bool:
        """What the replica says of itself: everything received is replayed, and the receiver streams."""
        with self.engine.connect() as conn:
            return bool(conn.scalar(text(
                "SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()"
                " AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")))


@pytest.fixture
def wal_receiver(setup) -> Iterator[WalReceiver]:
    receiver = WalReceiver(setup[0])
    try:
        yield receiver
    finally:
        receiver.resume()  # whatever the test did: the replica must stream again for the next test


def _truncate(app) -> None:
    tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    with app.extensions["db.engine"].begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def _settle_once(app, client, token) -> None:
    response = settle(client, issue(client, token, person_id(app, CHILD)))
    assert response.status_code == 201, response.get_json()


def _replica_caught_up(app, settlements: int) -> None:
    engine = app.extensions["db.replica"].engine
    for _ in range(200):
        with engine.connect() as conn:
            if conn.scalar(text("SELECT count(*) FROM settlements")) == settlements:
                return
        time.sleep(0.05)
    raise AssertionError("the replica did not catch up")


def _reads(target: str) -> float:
    return sum(s.value for m in READS.collect() for s in m.samples
               if s.name == "copay_record_reads_total" and s.labels["target"] == target)


def _deductions(client, token) -> list:
    response = client.get("/api/v1/records/deductions", headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def _wait_out_own_writes() -> None:
    time.sleep(MAX_LAG + 1.2)


def test_record_reads_go_to_the_replica_and_nothing_is_written_there(setup):
    app, client, token, statements, _primary, _replica = setup
    _settle_once(app, client, token)
    _settle_once(app, client, token)
    _replica_caught_up(app, 2)
    # The money transactions (and the sign-in, the voucher) ran on the primary only.
    assert any("INSERT INTO SETTLEMENTS" in s.upper() for s in statements["primary"])
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements["replica"])
    _wait_out_own_writes()
    replica_before, primary_before = _reads("replica"), _reads("primary")
    statements["replica"].clear()
    for path in ("/api/v1/records/deductions", "/api/v1/quota", "/api/v1/notifications",
                 "/api/v1/records/authorizations"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 200, (path, response.get_json())
    assert len(_deductions(client, token)) == 2  # the replica has the settlements
    assert _reads("replica") - replica_before == 5 and _reads("primary") == primary_before
    assert any("settlements" in s for s in statements["replica"])
    # Only reads ever reached the replica (it is a hot standby, and the connections are read-only too).
    assert statements["replica"] and all(s.lstrip().upper().startswith("SELECT") for s in statements["replica"])
    with app.extensions["db.replica"].engine.connect() as conn:
        assert conn.scalar(text("SELECT pg_is_in_recovery()")) is True
    app.extensions["metrics.state"].ttl = 0
    scraped = client.get("/metrics").get_data(as_text=True)
    lag_line = next(line for line in scraped.splitlines() if line.startswith("copay_replica_lag_seconds "))
    assert 0 <= float(lag_line.split()[1]) <= MAX_LAG


def test_a_callers_own_write_is_read_back_from_the_primary(setup):
    app, client, token, statements, _primary, _replica = setup
    _wait_out_own_writes()
    own_before = sum(s.value for m in READS.collect() for s in m.samples
                     if s.name == "copay_record_reads_total" and s.labels["reason"] == "own_write")
    issue(client, token, person_id(app, CHILD))  # the owner's own write (a voucher)
    statements["replica"].clear()
    _deductions(client, token)
    own_after = sum(s.value for m in READS.collect() for s in m.samples
                    if s.name == "copay_record_reads_total" and s.labels["reason"] == "own_write")
    assert own_after == own_before + 1
    assert not any("settlements" in s for s in statements["replica"])


def test_a_lagging_replica_sends_reads_to_the_primary_until_it_catches_up(setup):
    app, client, token, _statements, _primary, _replica = setup
    engine = app.extensions["db.replica"].engine
    _settle_once(app, client, token)
    _replica_caught_up(app, 1)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_wal_replay_pause()"))
    try:
        _settle_once(app, client, token)  # the replica does not replay this one
        _wait_out_own_writes()
        time.sleep(0.5)
        before = _reads("replica")
        items = _deductions(client, token)
        assert len(items) == 2, "read from the primary: the new settlement is there"
        assert _reads("replica") == before
        assert app.extensions["db.replica"].state == "lagging"
    finally:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_wal_replay_resume()"))
    _replica_caught_up(app, 2)
    time.sleep(1.1)
    _deductions(client, token)  # this look-up runs the health check
    before = _reads("replica")
    assert len(_deductions(client, token)) == 2
    assert _reads("replica") == before + 1, "back on the replica once it has caught up"


def _back_on_the_replica(app, client, token, settlements: int) -> None:
    _replica_caught_up(app, settlements)
    time.sleep(1.1)
    _deductions(client, token)  # this look-up runs the health check
    before = _reads("replica")
    assert len(_deductions(client, token)) == settlements
    assert _reads("replica") == before + 1, "back on the replica once it has caught up"


def test_a_stalled_wal_receiver_sends_reads_to_the_primary(setup, wal_receiver):
    """The replica has replayed all it received and its receiver says "streaming", but it received
    nothing since the stall: the first record read after a quiet spell must not be answered by it."""
    app, client, token, _statements, _primary, _replica = setup
    router = app.extensions["db.replica"]
    _settle_once(app, client, token)
    _replica_caught_up(app, 1)
    _wait_out_own_writes()
    _deductions(client, token)
    assert router.state == "ok"
    wal_receiver.stop()
    _settle_once(app, client, token)  # the replica never receives this one
    _wait_out_own_writes()
    assert wal_receiver.looks_fine(), "the trap: on its own side the replica looks up to date"
    before = _reads("replica")
    assert len(_deductions(client, token)) == 2, "read from the primary: the new settlement is there"
    assert _reads("replica") == before
    assert router.state == "lagging" and router.lag > MAX_LAG
    wal_receiver.resume()
    _back_on_the_replica(app, client, token, 2)


def test_reads_leave_a_stalled_replica_within_the_lag_limit(setup, sandbox, wal_receiver):
    """Reads keep coming while the receiver is stalled: once the write the replica lacks is older than
    REPLICA_MAX_LAG_SECONDS (+ one check interval), every read goes to the primary."""
    app, client, token, _statements, _primary, _replica = setup
    reader = sign_in(client, sandbox, SPOUSE)  # not the writer: its reads are not "own writes"
    _settle_once(app, client, token)
    _replica_caught_up(app, 1)
    _wait_out_own_writes()
    _deductions(client, reader)
    wal_receiver.stop()
    _settle_once(app, client, token)
    written = time.monotonic()
    late: list[tuple[float, str]] = []  # (seconds after the write, where the read went) once past the limit
    while (elapsed := time.monotonic() - written) < MAX_LAG + 2.5:
        before = _reads("replica")
        _deductions(client, reader)
        if elapsed > MAX_LAG + 1.2:  # the limit, one check interval, and slack for a slow machine
            late.append((round(elapsed, 2), "replica" if _reads("replica") > before else "primary"))
        time.sleep(0.1)
    assert late and all(target == "primary" for _, target in late), late
    assert app.extensions["db.replica"].state == "lagging"
    wal_receiver.resume()
    _back_on_the_replica(app, client, token, 2)


def test_a_stopped_replica_sends_reads_to_the_primary(setup):
    app, client, token, _statements, _primary, replica = setup
    _settle_once(app, client, token)
    _replica_caught_up(app, 1)
    _wait_out_own_writes()
    _deductions(client, token)  # a pooled connection to the replica exists now
    replica.stop()
    primary_before = _reads("primary")
    for _ in range(3):
        assert len(_deductions(client, token)) == 1  # answered, from the primary
    assert _reads("primary") == primary_before + 3
    assert app.extensions["db.replica"].state == "down"
    replica.start()


def test_mixed_run_share_of_record_reads_on_the_replica(setup, sandbox, capsys):
    """A mixed run (figure for docs/OPERATIONS.md): the owner issues a voucher and the hospital settles
    it, then the owner and two other signed-in family members and neighbours read their records."""
    app, client, token, _statements, _primary, _replica = setup
    readers = [token, sign_in(client, sandbox, SPOUSE), sign_in(client, sandbox, NEIGHBOUR)]
    _wait_out_own_writes()
    replica_before, primary_before = _reads("replica"), _reads("primary")
    reads = 0
    for _round in range(5):
        _settle_once(app, client, token)  # the owner's own write (the voucher), then the hospital's
        for _ in range(3):
            for reader in readers:
                for path in ("/api/v1/records/deductions", "/api/v1/quota", "/api/v1/notifications"):
                    assert client.get(path, headers=bearer(reader)).status_code == 200
                    reads += 1
            time.sleep(0.1)
    on_replica = _reads("replica") - replica_before
    on_primary = _reads("primary") - primary_before
    assert on_replica + on_primary == reads
    share = on_replica / reads
    with capsys.disabled():
        print(f"\nreplica share of record reads in a mixed run: {share:.0%} ({on_replica:.0f}/{reads})")
    # The owner reads right after their own write: from the primary; the others from the replica.
    assert 0.5 <= share < 1.0


def test_a_health_check_is_one_statement_on_each_side(setup, capsys):
    """The check runs at most once a second (or every 0.2 s while unsure) per process: its cost (figure
    for docs/OPERATIONS.md) is one cheap statement on the primary and one on the replica."""
    app, _client, _token, statements, _primary, _replica = setup
    router = app.extensions["db.replica"]
    router._check()
    statements["primary"].clear()
    statements["replica"].clear()
    checks = 300
    started = time.perf_counter()
    for _ in range(checks):
        router._check()
    elapsed = time.perf_counter() - started
    assert router.state == "ok" and router.lag <= MAX_LAG
    assert statements["primary"] == [str(PRIMARY_SQL)] * checks
    assert statements["replica"] == [str(REPLICA_SQL)] * checks
    with capsys.disabled():
        print(f"\nreplica health check: {elapsed / checks * 1000:.2f} ms each ({checks} checks)")
