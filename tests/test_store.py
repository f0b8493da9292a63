"""The description store on real SQLite files and real processes: leases (single flight across
processes) and read-only stores. Times here only bound the waits; nothing asserts speed."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.store import DescriptionStore, lease_owner

META = {"backend": "openai", "model": "m", "template": "actiongpt", "template_version": "1", "prompt": "p",
        "params": {}, "k": 2}
HOST = lease_owner().split(":")[0]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def add(store: DescriptionStore, key: str, *texts: str, release: str | None = None) -> list[str]:
    return store.append(key, phrase=f"phrase {key}", descriptions=list(texts), raw={"texts": texts}, meta=META,
                        requests=1, release=release)


def key_of(i: int) -> str:
    return hashlib.sha256(f"key {i}".encode()).hexdigest()


def child(code: str) -> subprocess.Popen:
    """A separate Python process using the store; it prints one line when it got where ``code`` says."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


# -- leases within one process ----------------------------------------------------------------------
def test_claim_reads_and_leases_in_one_step(tmp_path):
    with DescriptionStore(tmp_path / "s.sqlite") as store:
        add(store, "a", "one", "two")
        me, other = lease_owner(), "elsewhere:1:t"
        claim = store.claim(["a", "b", "a"], me, ttl=60)
        assert claim.current == {"a": ["one", "two"]} and claim.mine == {"a", "b"} and claim.busy == {}
        again = store.claim(["a", "b"], me, ttl=60)  # our own leases stay ours
        assert again.mine == {"a", "b"}
        theirs = store.claim(["a", "b", "c"], other, ttl=60)
        assert theirs.mine == {"c"} and set(theirs.busy) == {"a", "b"}
        assert all(time.time() + 50 < expires <= time.time() + 60 for expires in theirs.busy.values())
        assert {key: owner for key, (owner, _) in store.leases().items()} == {"a": me, "b": me, "c": other}


def test_append_with_release_answers_and_frees_the_key_together(tmp_path):
    with DescriptionStore(tmp_path / "s.sqlite") as store:
        me, other = lease_owner(), "elsewhere:1:t"
        assert store.claim(["a"], me, ttl=60).mine == {"a"}
        statements = []
        store._conn.set_trace_callback(statements.append)
        assert add(store, "a", "one", release=me) == ["one"]
        store._conn.set_trace_callback(None)
        # One transaction: the answer and the lease's end commit together.
        body = statements[statements.index("BEGIN IMMEDIATE") + 1: statements.index("COMMIT")]
        assert any(s.startswith("INSERT INTO descriptions") for s in body)
        assert any(s.startswith("DELETE FROM leases") for s in body)
        assert store.leases() == {}
        claim = store.claim(["a"], other, ttl=60)
        assert claim.mine == {"a"} and claim.current == {"a": ["one"]}

        # A failed append keeps the lease (the answer is not there, so neither is the release).
        store.claim(["b"], me, ttl=60)
        with pytest.raises(KeyError):
            store.append("b", phrase="b", descriptions=["x"], raw={}, meta={}, release=me)
        assert store.get_many(["b"]) == {} and store.leases()["b"][0] == me
        # Releasing someone else's lease is a no-op: append(release=me) on 'a' (now other's) keeps it.
        add(store, "a", "two", release=me)
        assert store.leases()["a"][0] == other


def test_release_and_renew_touch_only_their_owner(tmp_path):
    with DescriptionStore(tmp_path / "s.sqlite") as store:
        me, other = lease_owner(), "elsewhere:1:t"
        store.claim(["a", "b"], me, ttl=0.3)
        store.claim(["c"], other, ttl=0.3)
        assert store.renew(me, ttl=120) == 2
        time.sleep(0.5)  # past the first ttl: only the renewed leases still hold
        taker = store.claim(["a", "b", "c"], "thirdhost:2:t", ttl=60)
        assert set(taker.busy) == {"a", "b"} and taker.mine == {"c"}
        assert all(expires > time.time() + 100 for expires in taker.busy.values())
        store.release(["a", "c"], me)  # 'c' is not ours: stays with thirdhost
        assert {key: owner for key, (owner, _) in store.leases().items()} == {"b": me, "c": "thirdhost:2:t"}
        assert store.renew("nobody:3:t", ttl=60) == 0


def test_expired_lease_of_another_host_is_taken_over(tmp_path):
    with DescriptionStore(tmp_path / "s.sqlite") as store:
        store.claim(["a", "gone"], "otherhost:123:t", ttl=0.2)
        assert set(store.claim(["a"], lease_owner(), ttl=60).busy) == {"a"}  # its pid means nothing here
        time.sleep(0.3)
        assert store.claim(["a"], lease_owner(), ttl=60).mine == {"a"}
        assert set(store.leases()) == {"a", "gone"}
        store.release([], lease_owner())  # sweeps expired leases: 'gone' was never claimed again
        assert set(store.leases()) == {"a"}


def test_owner_with_a_live_pid_but_another_token_waits_for_expiry(tmp_path):
    """A live pid with a token that is not its process's: pids get reused, so only expiry frees it."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with DescriptionStore(tmp_path / "s.sqlite") as store:
            store.claim(["a"], f"{HOST}:{sleeper.pid}:not-its-token", ttl=0.3)
            assert set(store.claim(["a"], lease_owner(), ttl=60).busy) == {"a"}
            time.sleep(0.4)
            assert store.claim(["a"], lease_owner(), ttl=60).mine == {"a"}
            # Our own pid with a token that is not ours: an earlier process that had our pid, gone.
            store.claim(["b"], f"{HOST}:{os.getpid()}:earlier-process", ttl=3600)
            assert store.claim(["b"], lease_owner(), ttl=60).mine == {"b"}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lease_owner_differs_in_a_forked_child():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its owner id and leave at once
        os.write(write, lease_owner().encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = lease_owner()
    assert mine == lease_owner() and theirs and theirs != mine
    assert mine.split(":")[:2] == [HOST, str(os.getpid())] and theirs.split(":")[:2] == [HOST, str(pid)]


# -- leases across processes ------------------------------------------------------------------------
CLAIM_AND_HOLD = """
import time
from actiongpt_plugin.store import DescriptionStore, lease_owner
store = DescriptionStore({path!r})
claim = store.claim({keys!r}, lease_owner(), ttl=3600)
print(lease_owner(), len(claim.mine), flush=True)
time.sleep(60)
"""


def test_killed_owner_leases_are_taken_over_at_once(tmp_path):
    path = tmp_path / "s.sqlite"
    keys = [key_of(i) for i in range(5)]
    holder = child(CLAIM_AND_HOLD.format(path=str(path), keys=keys))
    try:
        owner, held = holder.stdout.readline().split()
        assert int(held) == 5 and owner.split(":")[1] == str(holder.pid)
        with DescriptionStore(path) as store:
            claim = store.claim(keys, lease_owner(), ttl=60)
            assert claim.mine == set() and set(claim.busy) == set(keys)  # alive: its leases hold (1 h)
            holder.send_signal(signal.SIGKILL)
            # Not reaped yet (a zombie) or reaped: either way dead, and the leases are ours long before expiry.
            deadline = time.monotonic() + 10
            while not claim.mine and time.monotonic() < deadline:
                time.sleep(0.02)
                claim = store.claim(keys, lease_owner(), ttl=60)
            assert claim.mine == set(keys) and claim.busy == {}
            assert min(expires for _, expires in store.leases().values()) < time.time() + 61
    finally:
        holder.kill()
        holder.wait()


def _hammer(path: str, keys: list, markers: str, start, seed: int, out) -> None:
    """One of several processes paying for shared keys through leases, as the expander will.

    While it holds a key's lease it keeps an O_EXCL marker file for the key: if two owners ever held
    one key at once, the second marker could not be created.
    """
    rng = random.Random(seed)
    owner = lease_owner()
    store = DescriptionStore(path)
    todo = list(keys)
    rng.shuffle(todo)
    paid, busy_seen, overlaps = 0, 0, 0
    start.wait(timeout=60)
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        key = todo.pop(0)
        claim = store.claim([key], owner, ttl=30)
        if key in claim.busy:
            busy_seen += 1
            todo.append(key)  # another process pays: come back for its answer
            continue
        if key in claim.current:  # answered meanwhile: nothing to pay
            store.release([key], owner)
            continue
        marker = os.path.join(markers, key)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            overlaps += 1
            marker = None
        time.sleep(rng.uniform(0.002, 0.01))  # the request
        if marker:
            os.unlink(marker)
        add(store, key, f"paid by {owner}", release=owner)
        paid += 1
    store.close()
    out.put({"owner": owner, "paid": paid, "busy_seen": busy_seen, "overlaps": overlaps, "left": len(todo)})


def test_processes_hammering_the_same_keys_pay_each_key_once(tmp_path):
    path, markers = tmp_path / "s.sqlite", tmp_path / "markers"
    markers.mkdir()
    DescriptionStore(path).close()
    keys = [key_of(i) for i in range(40)]
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(path), keys, str(markers), start, seed, out)) for seed in range(4)]
    for p in procs:
        p.start()
    try:
        reports = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(r["left"] == 0 for r in reports), reports
    assert sum(r["overlaps"] for r in reports) == 0, reports  # never two holders of one key
    assert sum(r["busy_seen"] for r in reports) > 0, reports  # they did contend
    with DescriptionStore(path) as store:
        rows = {row["key"]: row for row in store.rows()}
        assert sorted(rows) == sorted(keys) and store.leases() == {}
        assert all(len(row["descriptions"]) == 1 and row["requests"] == 1 for row in rows.values())  # paid once
        assert sum(r["paid"] for r in reports) == len(keys)
        assert store.integrity_check() == "ok"


# -- read-only stores ---------------------------------------------------------------------------------
def filled(path: Path) -> Path:
    with DescriptionStore(path) as store:
        add(store, "a", "one", "two")
        add(store, "b", "three")
        store.add_batch("sub-1", "/v1/chat/completions", [{"key": "c", "phrase": "c", "n": 4}])
    return path


def assert_every_write_refused(store: DescriptionStore, reason: str) -> None:
    writes = {
        "append": lambda: add(store, "z", "new"),
        "claim": lambda: store.claim(["z"], lease_owner(), ttl=10),
        "release": lambda: store.release(["a"], lease_owner()),
        "renew": lambda: store.renew(lease_owner(), ttl=10),
        "put_row": lambda: store.put_row({"key": "z", "phrase": "z", "descriptions": ["x"]}),
        "put_rows": lambda: store.put_rows([{"key": "z", "phrase": "z", "descriptions": ["x"]}]),
        "add_batch": lambda: store.add_batch("sub-2", "/v1/chat/completions", []),
        "set_batch": lambda: store.set_batch("sub-1", "completed", "batch_1"),
        "drop_batch": lambda: store.drop_batch("sub-1"),
        "collect_batch": lambda: store.collect_batch("sub-1", "completed", []),
    }
    for name, write in writes.items():
        with pytest.raises(ActionGPTError) as err:
            write()
        assert str(err.value) == f"description store {store.path} is read-only ({reason})", name


def lookups(store: DescriptionStore) -> dict:
    return {"get_many": store.get_many(["a", "b", "z"]), "rows": [r["phrase"] for r in store.rows()],
            "stats": store.stats()["rows"], "open_batches": [b["submission"] for b in store.open_batches()],
            "integrity": store.integrity_check()}


EXPECTED = {"get_many": {"a": ["one", "two"], "b": ["three"]}, "rows": ["phrase a", "phrase b"], "stats": 2,
            "open_batches": ["sub-1"], "integrity": "ok"}


def test_readonly_store_serves_lookups_and_refuses_writes(tmp_path):
    path = filled(tmp_path / "s.sqlite")
    before = path.read_bytes()
    with DescriptionStore(path, readonly=True) as store:
        assert not store.writable and lookups(store) == EXPECTED
        assert_every_write_refused(store, "opened with readonly=True")
    assert path.read_bytes() == before
    with DescriptionStore(path) as store:
        assert store.writable and lookups(store) == EXPECTED


def test_readonly_store_that_does_not_exist_is_empty(tmp_path):
    path = tmp_path / "missing" / "s.sqlite"
    with DescriptionStore(path, readonly=True) as store:
        assert store.get_many(["a"]) == {} and list(store.rows()) == [] and store.stats()["rows"] == 0
        assert store.open_batches() == []
        assert_every_write_refused(store, "opened with readonly=True")
    assert not path.exists()


def test_old_store_gains_the_leases_table_in_place(tmp_path):
    """A store from before batches and leases: read-only it still answers; read-write it upgrades."""
    path = tmp_path / "old.sqlite"
    with DescriptionStore(path) as store:
        add(store, "a", "one")
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE leases; DROP TABLE batches;")
    conn.close()
    with DescriptionStore(path, readonly=True) as store:
        assert store.get_many(["a"]) == {"a": ["one"]} and store.open_batches() == [] and store.leases() == {}
    with DescriptionStore(path) as store:
        assert store.claim(["a"], lease_owner(), ttl=10).current == {"a": ["one"]} and "a" in store.leases()


def unprivileged(fn, *args):
    """Run ``fn(*args)`` where file permissions apply: as is for a normal user; as root (who ignores
    permission bits) in a forked child that has dropped to the unprivileged 'nobody' user."""
    if os.geteuid() != 0:
        return fn(*args)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def run():
        try:
            os.setgid(65534)
            os.setuid(65534)
            out.put(("ok", fn(*args)))
        except BaseException as exc:  # report it to the test instead of dying silently
            out.put(("error", f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=run)
    proc.start()
    try:
        status, value = out.get(timeout=60)
    finally:
        proc.join(timeout=10)
    assert status == "ok", value
    return value


def _open_and_read(path: str) -> dict:
    with DescriptionStore(path) as store:
        refused = []
        for write in (lambda: add(store, "z", "new"), lambda: store.claim(["z"], lease_owner(), ttl=10)):
            try:
                write()
            except ActionGPTError as exc:
                refused.append(str(exc))
        return {"writable": store.writable, "reason": store.readonly_reason, "lookups": lookups(store),
                "refused": refused}


@pytest.fixture
def shared_dir():
    """A directory the unprivileged user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="actiongpt-ro-"))
    folder.chmod(0o755)
    yield folder
    for sub in folder.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    subprocess.run(["rm", "-rf", str(folder)], check=True)


@pytest.mark.parametrize("case", ["read-only dir", "read-only file and dir", "writer still open", "no store yet"])
def test_store_in_a_read_only_directory(shared_dir, case):
    folder = shared_dir / "ro"
    folder.mkdir()
    path = folder / "s.sqlite"
    writer = None
    if case == "writer still open":
        # Another process's writes still in the -wal file (not checkpointed): they must be read too.
        writer = DescriptionStore(path)
        add(writer, "a", "one", "two")
        add(writer, "b", "three")
        writer.add_batch("sub-1", "/v1/chat/completions", [])
        assert (folder / "s.sqlite-wal").stat().st_size > 0
    elif case != "no store yet":
        filled(path)
        assert not (folder / "s.sqlite-shm").exists()  # closed cleanly: only immutable opening works here
    for file in folder.iterdir():  # writable by anyone: the directory alone stands in the way ...
        file.chmod(0o666)
    if case == "read-only file and dir":  # ... or the file as well
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        result = unprivileged(_open_and_read, str(path))
    finally:
        if writer:
            writer.close()
    expected_reason = "the file is not writable" if case == "read-only file and dir" else "its directory is not writable"
    assert result["writable"] is False and result["reason"] == expected_reason
    assert result["refused"] == [f"description store {path} is read-only ({expected_reason})"] * 2
    if case == "no store yet":
        assert result["lookups"] == {"get_many": {}, "rows": [], "stats": 0, "open_batches": [], "integrity": "ok"}
        assert not path.exists()
    else:
        assert result["lookups"] == EXPECTED


def _offline_expansion(path: str) -> dict:
    from actiongpt_plugin import Expander
    from actiongpt_plugin.errors import MissingDescriptionsError

    options = {"store.path": path, "store.offline": True}
    with Expander(backend="scripted", **options) as ex:
        found = ex.expand(["jump", "run"])
        writable = ex.store.writable
    try:
        with Expander(backend="scripted", **options) as ex:
            ex.expand(["fly"])
        missing = None
    except MissingDescriptionsError as exc:
        missing = str(exc)
    return {"found": found, "writable": writable, "missing": missing}


def test_offline_expansion_from_a_read_only_store(shared_dir, scripted):
    """Issue 10: a store on a read-only mount could not even be used with --offline."""
    folder = shared_dir / "ro"
    folder.mkdir()
    path = folder / "s.sqlite"
    from actiongpt_plugin import Expander

    with Expander(backend="scripted", **{"store.path": str(path)}) as ex:
        expected = ex.expand(["jump", "run"])
    calls = len(scripted.calls)
    path.chmod(0o444)
    folder.chmod(0o555)
    result = unprivileged(_offline_expansion, str(path))
    assert result == {"found": expected, "writable": False,
                      "missing": "no stored descriptions for 1 phrase(s): 'fly'"}
    assert len(scripted.calls) == calls
