"""A queue of long jobs kept in an Optuna storage: each job runs once, whoever runs it.

The reference table (``reference.py``) is dozens of trainings of minutes each, built
across processes, machines and sessions. Rather than a scheduler of our own, the jobs
live in the same storage a study uses (a journal file, or PostgreSQL for several
machines), one Optuna trial per job:

* **add**: a job is a WAITING trial carrying its ``edg_key`` and its description. A job
  whose key is already there (waiting, running or complete) is not added again.
* **claim**: WAITING -> RUNNING is atomic in both storages (Optuna's own ``enqueue``
  pop), so two workers never claim the same trial. Should two trials of one key exist
  (two processes adding at the same moment on PostgreSQL), only the lowest-numbered
  live one runs; the others are closed as ``duplicate`` when claimed.
* **liveness**: the claiming worker stamps ``host:pid:start`` and a heartbeat time
  (``edg_beat``, refreshed by a thread). A RUNNING job is lost when its process is gone
  (journal: one machine, checked at once) or its heartbeat is older than the grace
  period (any storage, any host). A worker that finds a lost job fails it and adds it again (``edg_attempt`` + 1,
  at most ``max_attempts`` in all); failing a finished trial raises in both storages,
  so two workers that find the same lost job requeue it once.
* **errors**: a job that raises (a diverged training, a bad graph) is its own failure,
  recorded FAIL with the reason and never retried; only a lost process is retried.

A killed worker therefore costs its job in flight (less when the job resumes from its
own checkpoint), never a finished job, and never blocks the others.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from .storage import _alive, is_journal, open_storage, study_lock, worker_stamp

__all__ = ["Job", "JobQueue"]

LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


@dataclass(frozen=True)
class Job:
    """A claimed job: its trial, key and description (what ``add`` was given)."""

    trial_id: int
    number: int
    key: str
    spec: dict
    attempt: int
    order: int = 0  # its place in the queue (``_order``), kept when it is put back


def _order(t: FrozenTrial) -> int:
    """A job's place in the queue: its first trial's number, kept by every retry (a journal
    written before ``edg_order`` existed: the trial it retries)."""
    return int(t.user_attrs.get("edg_order", t.user_attrs.get("edg_retry_of", t.number)))


def _ours(t: FrozenTrial, keys: Collection[str] | None) -> bool:
    """Whether a trial is one of ``keys``' jobs (every job when ``keys`` is None)."""
    return keys is None or t.user_attrs.get("edg_key") in keys


class JobQueue:
    """The jobs of one named queue in a storage (``None``: ``RUN/jobs.journal``)."""

    def __init__(self, name: str, run_dir: str | os.PathLike, storage: str | None = None, *,
                 heartbeat: float = 10.0, grace: float | None = None, max_attempts: int = 3):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.run_dir = Path(run_dir)
        self.name = name
        self.heartbeat = heartbeat
        self.grace = grace if grace is not None else 3 * heartbeat + 5
        self.max_attempts = max_attempts
        url = storage if storage is not None else str(self.run_dir / "jobs.journal")
        # no heartbeat of Optuna's own: our liveness check is the one retry mechanism
        self.storage = open_storage(url, self.run_dir, heartbeat=None)
        self._local = is_journal(self.storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # load first: a journal's create_study appends a record even when the queue exists
                self.study = optuna.load_study(storage=self.storage, study_name=name)
            except KeyError:
                self.study = optuna.create_study(storage=self.storage, study_name=name, load_if_exists=True,
                                                 direction="maximize")

    # ------------------------------------------------------------------------ adding

    def _trials(self, states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=tuple(states) if states is not None else None)

    def add(self, jobs: Iterable[tuple[str, dict]]) -> int:
        """Add ``(key, spec)`` jobs not already there; returns how many were added."""
        with self._guard():
            present = {t.user_attrs.get("edg_key") for t in self._trials(LIVE)}
            added = 0
            for key, spec in jobs:
                if key in present:
                    continue
                self._enqueue(key, spec, attempt=1)
                present.add(key)
                added += 1
            return added

    def _enqueue(self, key: str, spec: dict, attempt: int, retry_of: int | None = None,
                 order: int | None = None) -> None:
        attrs = {"edg_key": key, "edg_job": spec, "edg_attempt": attempt}
        if retry_of is not None:
            attrs["edg_retry_of"] = retry_of
            attrs["edg_order"] = order  # the place of the job's first trial in the queue
        self.study.enqueue_trial({}, user_attrs=attrs)

    def _guard(self):
        """The study's lock: a file lock on the journal (one machine), an advisory lock on
        PostgreSQL (every machine); the claim-time duplicate rule is the second line."""
        return study_lock(self.study, self.run_dir)

    # ------------------------------------------------------------------------ claiming

    def claim(self, keys: Collection[str] | None = None) -> Job | None:
        """The next waiting job (of ``keys`` only, when given), now RUNNING and ours; None
        when none is waiting. A job put back (interrupted, lost) keeps its place in the
        order: it is taken before the jobs queued after it first was."""
        waiting = [t for t in self._trials((TrialState.WAITING,)) if _ours(t, keys)]
        for t in sorted(waiting, key=lambda t: (_order(t), t.number)):
            try:
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    continue  # another worker took it
            except UpdateFinishedTrialError:
                continue
            key = t.user_attrs.get("edg_key")
            earlier = [o for o in self._trials(LIVE) if o.user_attrs.get("edg_key") == key and o.number < t.number]
            if earlier:
                self.storage.set_trial_user_attr(t._trial_id, "edg_status", "duplicate")
                self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                continue
            self.storage.set_trial_user_attr(t._trial_id, "edg_worker", worker_stamp())
            self.storage.set_trial_user_attr(t._trial_id, "edg_beat", time.time())
            return Job(t._trial_id, t.number, key, dict(t.user_attrs.get("edg_job", {})),
                       int(t.user_attrs.get("edg_attempt", 1)), _order(t))
        return None

    def beating(self, job: Job) -> "_Beat":
        """A context that refreshes ``job``'s heartbeat until it exits."""
        return _Beat(self, job)

    def complete(self, job: Job, value: float, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(job.trial_id, k, v)
        self.storage.set_trial_user_attr(job.trial_id, "edg_status", "done")
        self.storage.set_trial_state_values(job.trial_id, TrialState.COMPLETE, [float(value)])

    def fail(self, job: Job, reason: str) -> None:
        """The job's own failure: recorded, not retried."""
        self.storage.set_trial_user_attr(job.trial_id, "edg_status", "failed")
        self.storage.set_trial_user_attr(job.trial_id, "edg_reason", reason[:2000])
        self.storage.set_trial_state_values(job.trial_id, TrialState.FAIL)

    def _interrupted(self, job: Job) -> None:
        try:
            self.storage.set_trial_user_attr(job.trial_id, "edg_status", "interrupted")
            self.storage.set_trial_state_values(job.trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return
        self._enqueue(job.key, job.spec, job.attempt, retry_of=job.number, order=job.order)

    # ------------------------------------------------------------------------ lost jobs

    def _lost(self, t: FrozenTrial, now: float) -> bool:
        stamp = t.user_attrs.get("edg_worker")
        beat = t.user_attrs.get("edg_beat")
        # the pid check only where every worker is on this machine (the journal): on a
        # database, two containers may share a host name, and only the heartbeat is safe
        if self._local and stamp is not None and stamp.partition(":")[0] == socket.gethostname() \
                and not _alive(stamp):
            return True
        if beat is not None:
            return now - float(beat) > self.grace
        started = t.datetime_start.timestamp() if t.datetime_start else now
        return now - started > self.grace  # claimed, then killed before its first stamp

    def recover(self) -> list[int]:
        """Fail the lost RUNNING jobs and add each again (while attempts are left);
        returns the numbers of the trials requeued."""
        now = time.time()
        requeued = []
        for t in self._trials((TrialState.RUNNING,)):
            if not self._lost(t, now):
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, "edg_status", "lost")
                self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another worker got there first, and requeued it
            attempt = int(t.user_attrs.get("edg_attempt", 1))
            if attempt < self.max_attempts:
                self._enqueue(t.user_attrs["edg_key"], dict(t.user_attrs.get("edg_job", {})), attempt + 1,
                              retry_of=t.number, order=_order(t))
                requeued.append(t.number)
        return requeued

    # ------------------------------------------------------------------------ the loop

    def work(self, run: Callable[[Job], tuple[float, dict]], *, poll: float = 2.0,
             say: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False,
             keys: Collection[str] | None = None) -> int:
        """Claim and run jobs (of ``keys`` only, when given: one command's share of a queue
        that holds more) until none is waiting or running; returns how many this worker
        ran. ``run`` returns (value, attributes) or raises for the job's own failure."""
        ran = 0
        while not stop():
            self.recover()
            job = self.claim(keys)
            if job is None:
                if not any(_ours(t, keys) for t in self._trials((TrialState.RUNNING,))):
                    return ran
                time.sleep(poll)  # others are running: wait, to take over their jobs if they die
                continue
            with self.beating(job):
                try:
                    value, attrs = run(job)
                except KeyboardInterrupt:
                    # stopped on purpose (Ctrl-C, SIGTERM): back in the queue at once, same attempt
                    self._interrupted(job)
                    raise
                except Exception as e:  # noqa: BLE001 -- the job's own failure, recorded
                    say(f"job {job.key} failed: {type(e).__name__}: {e}")
                    self.fail(job, f"{type(e).__name__}: {e}")
                    continue
            self.complete(job, value, attrs)
            ran += 1
        return ran

    def counts(self, keys: Collection[str] | None = None) -> dict[str, int]:
        """Trials by status (a job stopped and resumed counts once per attempt), of ``keys``'
        jobs only where given; ``not queued``: those of ``keys`` no trial holds yet."""
        out: dict[str, int] = {}
        seen: set[str] = set()
        for t in self._trials():
            if not _ours(t, keys):
                continue
            seen.add(t.user_attrs.get("edg_key"))
            status = {TrialState.WAITING: "waiting", TrialState.RUNNING: "running"}.get(
                t.state, t.user_attrs.get("edg_status", t.state.name.lower()))
            out[status] = out.get(status, 0) + 1
        if keys is not None and len(set(keys) - seen):
            out["not queued"] = len(set(keys) - seen)
        return out

    def finished(self) -> list[FrozenTrial]:
        return [t for t in self._trials((TrialState.COMPLETE,))]

    def failed(self) -> list[FrozenTrial]:
        return [t for t in self._trials((TrialState.FAIL,)) if t.user_attrs.get("edg_status") == "failed"]


class _Beat:
    def __init__(self, queue: JobQueue, job: Job):
        self.queue, self.job = queue, job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.queue.heartbeat):
            try:
                self.queue.storage.set_trial_user_attr(self.job.trial_id, "edg_beat", time.time())
            except Exception:  # noqa: BLE001 -- a missed beat only makes the job look older
                pass

    def __enter__(self) -> "_Beat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
