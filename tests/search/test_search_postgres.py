"""Two `miras search` workers share one study in a real PostgreSQL server; one is killed with
SIGKILL in the middle of a trial; the other notices (heartbeat), retries the trial, and the study
ends with every requested trial finished once: none lost, none duplicated."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from test_search_helpers import write_search

pytestmark = pytest.mark.postgres
WANTED = 4


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: (uid, gid) of an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    pytest.skip("running as root and no unprivileged account (postgres, nobody) to run the server")


def _run(cmd: list[str], user: tuple[int, int] | None) -> None:
    def demote() -> None:
        if user is not None:
            os.setgid(user[1])
            os.setuid(user[0])

    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=demote, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throw-away server on a free loopback port; yields the URL of an empty database."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install 'mirasdsl[postgres]')")
    user = _as_user()
    root = tempfile.mkdtemp(prefix="miras-pg-")
    if user is not None:
        os.chown(root, *user)
    data, port = os.path.join(root, "data"), _free_port()
    try:
        _run([initdb, "-D", data, "-U", "miras", "-A", "trust", "-E", "UTF8", "--no-sync"], user)
        _run([pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60", "-o",
              f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], user)
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="miras", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE study")
        conn.close()
        yield f"postgresql://miras@127.0.0.1:{port}/study"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True,
                       preexec_fn=(lambda: (os.setgid(user[1]), os.setuid(user[0]))) if user else None)
        shutil.rmtree(root, ignore_errors=True)


def _worker(spec: Path, url: str, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mirasdsl", "search", str(spec), "--storage", url,
                             "--threads", "1", "--out", str(out)], cwd=spec.parent, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(predicate, what: str, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_one_killed(postgres: str, tmp_path: Path) -> None:
    import optuna

    spec = write_search(tmp_path, trials=WANTED, heartbeat={"interval": 1, "grace": 3, "retries": 2},
                        objective={"task": {"mqar": {"seq_len": 16, "kv_pairs": 2, "vocab_size": 16}},
                                   "steps": 120, "batch_size": 8, "eval_every": 40, "eval_batches": 1,
                                   "directions": {"accuracy": "maximize"}})
    a = _worker(spec, postgres, tmp_path / "a", tmp_path / "a.log")
    from mirasdsl.search.storage import driver_url

    storage = optuna.storages.RDBStorage(driver_url(postgres))

    def study() -> optuna.Study | None:
        try:
            return optuna.load_study(study_name="search", storage=storage)
        except KeyError:
            return None

    _wait(lambda: study() is not None, "worker a to create the study")
    b = _worker(spec, postgres, tmp_path / "b", tmp_path / "b.log")
    try:
        def a_running() -> bool:
            return any(t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{a.pid}")
                       for t in study().get_trials(deepcopy=False))

        _wait(a_running, "worker a to start a trial")
        killed = next(t.number for t in study().get_trials(deepcopy=False)
                      if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{a.pid}"))
        time.sleep(0.3)  # into the training loop (a trial takes seconds)
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        assert b.wait(240) == 0, (tmp_path / "b.log").read_text()
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    trials = study().get_trials(deepcopy=False)
    log = (tmp_path / "b.log").read_text()
    dead = trials[killed]
    assert dead.state.name == "FAIL" and "status" not in dead.user_attrs  # failed by the heartbeat
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", log
    assert retries[0].params == dead.params
    slots = [t for t in trials if "retry_of" not in t.user_attrs and t.user_attrs.get("status") != "surplus"]
    assert len(slots) == WANTED  # none lost, none extra
    finals = [t for t in trials if t.number != killed and t.user_attrs.get("status") != "surplus"]
    assert len(finals) == WANTED and all(t.state.name == "COMPLETE" for t in finals), log
    assert not [t for t in trials if not t.state.is_finished()]
    assert "ranked" in log and (tmp_path / "b" / "best.yaml").is_file()
