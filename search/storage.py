"""Where a study lives: a local SQLite file by default, PostgreSQL for workers on many machines.

Both are Optuna RDB storages, so heartbeats notice a killed worker: a running trial whose
heartbeat is older than ``grace`` seconds is failed by the next worker that looks, and the
callback here enqueues it again (same parameters) up to ``retries`` times. optuna-dashboard
opens either storage: ``optuna-dashboard sqlite:///studies/NAME.db``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

from mirasdsl.errors import StorageError

RETRY_OF = "retry_of"  # user attr of a re-run trial: the number of the trial it replaces
ATTEMPT = "attempt"  # 1 for the first retry of a trial, 2 for the next, ...


def default_url(study_name: str) -> str:
    """``sqlite:///studies/<study_name>.db``, relative to the working directory."""
    return f"sqlite:///studies/{study_name}.db"


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail:
        cred, at, host = tail.rpartition("@")
        user = cred.split(":")[0]
        return f"{head}{sep}{user}:***{at}{host}" if ":" in cred else url
    return url


def retry_callback(retries: int, grace: int) -> Callable[[Any, Any], None]:
    """Enqueue a stale trial again with its parameters, at most ``retries`` times per trial."""

    def retry(study: Any, trial: Any) -> None:
        attempt = int(trial.user_attrs.get(ATTEMPT, 0)) + 1
        if attempt > retries:
            return
        study.enqueue_trial(dict(trial.params), user_attrs={
            RETRY_OF: trial.number, ATTEMPT: attempt,
            "retry_reason": f"worker lost: trial {trial.number} had no heartbeat for more than {grace} s"})

    return retry


def requeue(study: Any, trial: Any, reason: str) -> None:
    """Enqueue ``trial`` (a FrozenTrial) again because it was interrupted before it finished."""
    study.enqueue_trial(dict(trial.params), user_attrs={
        RETRY_OF: trial.number, ATTEMPT: int(trial.user_attrs.get(ATTEMPT, 0)) + 1, "retry_reason": reason})


def driver_url(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed (psycopg 3, else psycopg2);
    SQLAlchemy's default would be psycopg 3 only. Other URLs are returned unchanged."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if importlib.util.find_spec("psycopg") is not None:
                return "postgresql+psycopg://" + rest
            if importlib.util.find_spec("psycopg2") is not None:
                return "postgresql+psycopg2://" + rest
            raise StorageError(f"storage {_redact(url)}: no PostgreSQL driver is installed; "
                               "install one with: pip install 'mirasdsl[postgres]'")
    return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith(("postgresql", "postgres")):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def _prepare_sqlite(url: str) -> None:
    path = url.split("sqlite:///", 1)[-1]
    if path and path != ":memory:":
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"storage {url}: cannot create its folder ({err.strerror})") from None


def open_storage(url: str, interval: int, grace: int, retries: int) -> Any:
    """An Optuna RDBStorage with heartbeats. Unreachable or unusable: :class:`StorageError`."""
    import optuna

    if not url.startswith(("sqlite:///", "postgresql", "postgres://", "mysql")):
        raise StorageError(
            f"storage {_redact(url)!r}: unsupported URL; expected sqlite:///PATH.db or "
            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    if url.startswith("sqlite:///"):
        _prepare_sqlite(url)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    shown, url = url, driver_url(url)
    last: Exception | None = None
    for attempt in range(3):  # two workers creating the tables at once may collide: try again
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=interval, grace_period=grace,
                heartbeat_stale_trial_callback=retry_callback(retries, grace))
        except ImportError as err:
            raise StorageError(f"storage {_redact(shown)}: the database driver is missing ({err}); "
                               "install it with: pip install 'mirasdsl[postgres]'") from None
        except Exception as err:  # sqlalchemy's OperationalError, ArgumentError, ...
            last = err
            if "could not connect" in str(err) or "Connection refused" in str(err) or attempt == 2:
                break
            time.sleep(0.5 + attempt)
    first = str(last).strip().splitlines()[0] if last is not None and str(last).strip() else type(last).__name__
    raise StorageError(f"cannot open the study storage {_redact(shown)}: {first}")
