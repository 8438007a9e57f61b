"""Where a study lives, and how a killed worker's trial gets back in the queue.

* A journal file (the default, ``RUN/study.journal``): Optuna's append-only log; it
  survives kills and several worker processes on one machine share it. Optuna 5 has
  no heartbeat for it, so every worker stamps its trials with ``host:pid:start-time``
  and, under a file lock, fails the RUNNING trials whose process is gone and enqueues
  their parameters again (``edg_retry_of``).
* PostgreSQL (or any SQLAlchemy URL): Optuna's heartbeat marks a dead worker's trial
  FAIL after the grace period and ``RetryFailedTrialCallback`` enqueues it again;
  workers on several machines run the same ``edg search run`` command.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .._io import locked  # re-exported: the study's lock
from ..errors import SearchError

__all__ = ["open_storage", "is_journal", "worker_stamp", "fail_dead_workers", "retry_of", "locked",
           "STALE_UNSTAMPED_S"]

# A RUNNING trial that never got its worker stamp (killed within milliseconds of being
# created) is taken as stale after this long.
STALE_UNSTAMPED_S = 300.0


def open_storage(url: str | None, run_dir: Path, heartbeat: int | None = 10) -> optuna.storages.BaseStorage:
    """``None`` or a path (``*.journal``, ``journal:PATH``): journal file; ``sqlite:///``,
    ``postgresql://`` ...: Optuna's RDB storage with a heartbeat."""
    if url is None:
        url = str(run_dir / "study.journal")
    if "://" not in url or url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        if path.exists() and not path.is_file():
            raise SearchError(f"storage {url!r}: not a regular file")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = _with_driver(url)
    for attempt in range(4):
        try:
            with warnings.catch_warnings():  # Optuna 5 calls the retry callback deprecated; it is still the mechanism
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                engine = {"pool_pre_ping": True} if not url.startswith("sqlite") else None
                if heartbeat is None:  # the caller keeps liveness itself (search.jobs)
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                    failed_trial_callback=RetryFailedTrialCallback(max_retry=3), engine_kwargs=engine,
                )
        except Exception as e:
            # workers started together on an empty database race to create Optuna's
            # tables; the loser sees a duplicate-key error and finds them on a retry
            if attempt < 3 and type(e).__name__ in ("IntegrityError", "ProgrammingError"):
                time.sleep(0.5 + attempt)
                continue
            error = e
            break
    try:
        raise error
    except ImportError as e:
        raise SearchError(f"storage {_redacted(url)}: a database driver is missing ({e}); "
                          "for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as e:  # SQLAlchemy's errors: a wrong URL, a server that is down
        raise SearchError(f"storage {_redacted(url)}: cannot open ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None


def _with_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 takes that to mean psycopg 3;
    use psycopg2 (the driver this project lists) when psycopg 3 is not installed."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.partition("://")[2]
    return url


def _redacted(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("://")
    if "@" in tail:
        creds, _, host = tail.rpartition("@")
        user, colon, _ = creds.partition(":")
        return f"{head}{sep}{user}{':***' if colon else ''}@{host}"
    return url


def is_journal(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, optuna.storages.JournalStorage)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (so a reused pid is not taken for the old process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def worker_stamp() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def _alive(stamp: str) -> bool:
    host, _, rest = stamp.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: not ours to judge (use PostgreSQL across machines)
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return start == "?" or now is None or now == start


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one re-runs (after its worker died), or None."""
    if "edg_retry_of" in trial.user_attrs:
        return int(trial.user_attrs["edg_retry_of"])
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and stable in use
        warnings.simplefilter("ignore")
        return RetryFailedTrialCallback.retried_trial_number(trial)


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Journal storage: mark FAIL (``edg_status`` "stale") the RUNNING trials whose worker
    process is gone. Returns their numbers; the caller requeues them."""
    if not is_journal(study._storage):
        return []
    now = _dt.datetime.now()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        stamp = t.user_attrs.get("edg_worker")
        if stamp is None:
            started = t.datetime_start or now
            if (now - started).total_seconds() < STALE_UNSTAMPED_S:
                continue
        elif _alive(stamp):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "edg_status", "stale")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        failed.append(t.number)
    return failed
