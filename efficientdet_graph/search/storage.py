"""Where a study lives, how its workers take turns, and how a dead worker's trial is found.

* A journal file (the default, ``RUN/study.journal``): Optuna's append-only log; it
  survives kills and several worker processes on one machine share it. Optuna has no
  heartbeat for it, so every worker stamps its trials with ``host:pid:start-time`` and a
  RUNNING trial whose process is gone (or a zombie) is failed as ``stale``.
* PostgreSQL (or any SQLAlchemy URL): Optuna's heartbeat; a trial whose worker missed
  beats for the grace period is failed (Optuna leaves no ``edg_status``: it reads as
  ``stale``). Workers on several machines run the same ``edg search run`` command.

The retry itself is ours and the same on both (``study.requeue_lost``), done under
``study_lock``: a file lock beside the journal, a PostgreSQL advisory lock on the
database (so workers on several machines take turns too). Optuna's own retry callback
is not used: two mechanisms would retry one trial twice.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from .._io import locked
from ..errors import SearchError

__all__ = ["open_storage", "is_journal", "worker_stamp", "fail_dead_workers", "retry_of", "study_lock",
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
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna's terms since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                engine = {"pool_pre_ping": True} if not url.startswith("sqlite") else None
                if heartbeat is None:  # the caller keeps liveness itself (search.jobs)
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine)
                # no stale-trial callback: the retry is ours (study.requeue_lost), as on the journal
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                                  engine_kwargs=engine)
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


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """The kernel's state letter and start time of ``pid`` (``/proc/PID/stat``), or None
    when there is no such process. Readable for every user's processes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return fields[0], fields[19]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (so a reused pid is not taken for the old process)."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def worker_stamp() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def _alive(stamp: str) -> bool:
    """Whether the worker process of ``stamp`` still runs. A zombie (killed, not yet
    reaped by its parent) is dead, and so is a reused pid (another start time)."""
    host, _, rest = stamp.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: not ours to judge (use PostgreSQL across machines)
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        if stat is None:
            return False
        state, now = stat
        return state not in ("Z", "X", "x") and (start == "?" or now == start)
    try:  # no /proc: signal 0 says only whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one re-runs (after its worker died), or None."""
    if "edg_retry_of" in trial.user_attrs:
        return int(trial.user_attrs["edg_retry_of"])
    # studies run before our own retry: Optuna's retry callback left this system attribute
    origin = trial.system_attrs.get("failed_trial")
    return int(origin) if origin is not None else None


def _lock_key(study_name: str) -> int:
    """A signed 64-bit advisory-lock key for the study (PostgreSQL's bigint)."""
    return int.from_bytes(hashlib.sha256(f"edg-study:{study_name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(study: optuna.Study, run_dir: Path) -> Iterator[None]:
    """Workers of ``study`` take turns in the block: an advisory lock held by this
    process's database session on PostgreSQL (every machine sees it; the server drops it
    with a dead worker's connection), a file lock in ``run_dir`` otherwise (journal and
    SQLite are one machine's)."""
    # a study holds an RDB storage inside Optuna's cache wrapper, which has no url or engine
    storage = getattr(study._storage, "_backend", study._storage)
    url = getattr(storage, "url", "")
    if not url.startswith(("postgresql", "postgres")):
        with locked(Path(run_dir) / ".study.lock"):
            yield
        return
    from sqlalchemy import text

    key = _lock_key(study.study_name)
    with storage.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        conn.commit()
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
            except Exception:  # a broken connection: drop it, and the server drops the lock with it
                conn.invalidate()


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; returns their numbers (the
    caller requeues them). Journal: by the worker stamp (``edg_status`` "stale", with the
    reason). Database: by Optuna's heartbeat (the grace period passed)."""
    if not is_journal(study._storage):
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9, and the documented way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            optuna.storages.fail_stale_trials(study)
        return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before]
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
        study._storage.set_trial_user_attr(t._trial_id, "edg_reason", f"its worker ({stamp or 'unknown'}) died")
        study._storage.set_trial_user_attr(t._trial_id, "edg_status", "stale")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        failed.append(t.number)
    return failed
