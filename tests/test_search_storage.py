"""Search studies across processes: a worker killed mid-trial (SIGKILL) and restarted,
two workers on a real PostgreSQL server this module starts itself (``initdb``/``pg_ctl``
on a temporary directory, a free loopback port). Two workers on one journal file, and
more faults: ``test_search_faults.py``.

Workers are the installed ``edg`` console script run as subprocesses, on the cheap proxy
of ``test_search.py`` (its feature cache built once here and copied into each run folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from efficientdet_graph.search.storage import retry_of
from efficientdet_graph.search.study import LOST, NO_SLOT, slots, trial_status

ROOT = Path(__file__).resolve().parents[1]
EDG = Path(sys.executable).parent / "edg"
PROXY = {"image_size": 64, "train_images": 32, "val_images": 16, "epochs": 0, "pretrain_epochs": 0,
         "batch_size": 16, "channels": 8}


def _env() -> dict:
    # this checkout's code, and one intra-op thread per worker (two workers on two cores)
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _command(out: Path, trials: int, epochs: int, extra: tuple = (), space: str = "bifpn_edges") -> list[str]:
    proxy = [a for k, v in {**PROXY, "epochs": epochs}.items() for a in ("--proxy", f"{k}={v}")]
    return [str(EDG), "search", "run", space, "--trials", str(trials), "--out", str(out), "--sampler",
            "random", "--no-seed-points", "--quiet", *proxy, *(extra if "--seed" in extra else ("--seed", "1", *extra))]


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def proxy_cache(tmp_path_factory) -> Path:
    from efficientdet_graph.search.proxy import ProxyConfig, ProxyTask

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = tmp_path_factory.mktemp("proxy") / "proxy-cache"
        ProxyTask(ProxyConfig(**PROXY), cache)  # epochs do not name the cache: one build serves all tests
    finally:
        torch.set_num_threads(before)
    return cache


def _run_dir(proxy_cache: Path, out: Path) -> Path:
    shutil.copytree(proxy_cache, out / "proxy-cache")
    return out


def _journal(out: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))


def _trials(storage, study: str = "bifpn_edges") -> list:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def _check_study(trials: list, budget: int) -> None:
    """Every slot finished once; nothing left running or waiting; no network trained
    twice; every trial outside the slots' final attempts is a dead attempt retried
    exactly once, or one that held no slot."""
    s = slots(trials, budget)
    assert s.finished == budget
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = [t.user_attrs["edg_key"] for t in trials if t.state == TrialState.COMPLETE and trial_status(t) == "done"]
    assert len(done) == len(set(done)), f"a network was trained twice: {Counter(done).most_common(2)}"
    retries = Counter(retry_of(t) for t in trials if retry_of(t) is not None)
    assert all(n == 1 for n in retries.values()), f"an attempt was retried more than once: {retries}"
    final = {t.number for t in s.latest.values()}
    for t in trials:
        if t.number not in final:
            st = trial_status(t)
            assert st in NO_SLOT or (st in LOST and retries[t.number] == 1), (t.number, st, t.user_attrs)


def _training(t) -> bool:
    return t.state == TrialState.RUNNING and "edg_key" in t.user_attrs  # stamped and sampled: it is training


def _await_trial(proc: subprocess.Popen, trials, match, timeout: float = 300):
    """Poll the study while ``proc`` runs: the first trial ``match`` accepts, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            found = [t for t in trials() if match(t)]
        except KeyError:  # the study is not created yet
            continue
        if found:
            return found[0]
    return None


def _kill_mid_trial(cmd: list[str], trials) -> int:
    """Start a worker, SIGKILL it while it trains a trial; the number of that trial."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    killed = None
    try:
        running = _await_trial(proc, trials, _training)
        if running is not None:
            os.kill(proc.pid, signal.SIGKILL)
            killed = running.number
    finally:
        if proc.poll() is None and killed is None:
            proc.kill()
        proc.wait(timeout=60)  # reaped: a zombie's pid would still look alive
    assert killed is not None, f"no trial was seen running; worker output:\n{proc.stdout.read()}"
    return killed


# ---------------------------------------------------------------------------- journal


def test_killed_worker_trial_is_requeued_and_the_study_finishes(proxy_cache, tmp_path):
    out = _run_dir(proxy_cache, tmp_path / "run")
    cmd = _command(out, trials=2, epochs=25)  # long trials: time to kill one mid-way
    killed = _kill_mid_trial(cmd, lambda: _trials(_journal(out)) if (out / "study.journal").is_file() else [])
    trials = _trials(_journal(out))
    assert trials[killed].state == TrialState.RUNNING  # the dead worker left it so

    _run(cmd)
    trials = _trials(_journal(out))
    dead = trials[killed]
    assert dead.state == TrialState.FAIL and dead.user_attrs["edg_status"] == "stale"
    retries = [t for t in trials if t.user_attrs.get("edg_retry_of") == killed]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.number > killed and retry.state == TrialState.COMPLETE and trial_status(retry) == "done"
    assert retry.params == dead.params
    assert retry.user_attrs["edg_worker"] != dead.user_attrs["edg_worker"]
    _check_study(trials, 2)


# ---------------------------------------------------------------------------- PostgreSQL


def test_two_workers_on_a_postgresql_server(proxy_cache, tmp_path, postgres):
    out = _run_dir(proxy_cache, tmp_path / "run")
    # distinct seeds: two workers with one seed draw the same points in lockstep (see the report)
    cmds = [_command(out, trials=6, epochs=6, extra=("--storage", postgres, "--seed", str(seed))) for seed in (1, 2)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
             for cmd in cmds]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    storage = optuna.storages.RDBStorage(postgres.replace("postgresql://", "postgresql+psycopg2://"))
    trials = _trials(storage)
    _check_study(trials, 6)
    workers = Counter(t.user_attrs["edg_worker"] for t in trials)
    assert len(workers) == 2, f"trials by worker: {dict(workers)}"
    assert not (out / "study.journal").exists()  # the study lives in the database


def test_killed_worker_on_postgresql_is_retried_once_its_heartbeat_stops(proxy_cache, tmp_path, postgres):
    """The restarted worker (the same ``--seed``) draws the killed trial's network first.
    Whether it starts before or after the heartbeat shows the killed trial dead, the retry
    trains that network: a new trial that draws it while the dead one still looks alive
    waits for it, and gives its slot back once it is found dead."""
    out = _run_dir(proxy_cache, tmp_path / "run")
    storage = optuna.storages.RDBStorage(postgres.replace("postgresql://", "postgresql+psycopg2://"))
    # heartbeat every 2 s: the dead worker's trial is stale after the 6 s grace period
    cmd = _command(out, trials=2, epochs=25, extra=("--storage", postgres, "--study", "killed", "--heartbeat", "2"))
    killed = _kill_mid_trial(cmd, lambda: _trials(storage, "killed"))
    assert _trials(storage, "killed")[killed].state == TrialState.RUNNING

    _run(cmd)
    trials = _trials(storage, "killed")
    assert trials[killed].state == TrialState.FAIL  # by the heartbeat check, not by a retry of our own
    retries = [t for t in trials if retry_of(t) == killed]
    assert len(retries) == 1, [(t.number, t.state, retry_of(t)) for t in trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and trial_status(retry) == "done"
    assert retry.params == trials[killed].params
    _check_study(trials, 2)
