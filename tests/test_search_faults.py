"""A search under faults, tried from outside as a user would: real ``edg search run``
processes, real SIGKILLs (of a ``--workers`` child, of a DataLoader worker inside a
trial), a real PostgreSQL server. Each run must end by itself with exactly N finished
trials, a killed trial retried once, and no network trained twice.

The helpers, the cheap proxy and the fixtures are ``test_search_storage``'s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from efficientdet_graph._io import locked
from efficientdet_graph.search.storage import _alive, retry_of
from efficientdet_graph.search.study import slots, trial_status
from test_search_storage import (_await_trial, _check_study, _command, _env, _journal, _kill_mid_trial,  # noqa: F401
                                 _run, _run_dir, _training, _trials, proxy_cache)


def _end(proc: subprocess.Popen, timeout: float) -> str:
    """The output of a run that must end by itself within ``timeout`` seconds."""
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        _stop_tree(proc)
        out = proc.communicate()[0]
        pytest.fail(f"the run did not end by itself within {timeout} s; its output:\n{out}")
    assert proc.returncode == 0, out
    return out


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _stop_tree(proc: subprocess.Popen) -> None:
    for kid in _children(proc.pid):
        try:
            os.kill(kid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()


def _kill_child_mid_trial(proc: subprocess.Popen, trials) -> int:
    """SIGKILL the ``--workers`` child of ``proc`` while it trains a trial; that trial's number."""
    def child(t) -> bool:
        return _training(t) and int(t.user_attrs["edg_worker"].split(":")[1]) != proc.pid

    running = _await_trial(proc, trials, child, timeout=120)
    if running is None:
        _stop_tree(proc)
        pytest.fail(f"no trial of a child worker was seen training; output:\n{proc.communicate()[0]}")
    os.kill(int(running.user_attrs["edg_worker"].split(":")[1]), signal.SIGKILL)
    return running.number


def _check_killed_once(trials: list, killed: int, budget: int) -> None:
    dead = trials[killed]
    assert dead.state == TrialState.FAIL and trial_status(dead) == "stale"
    retries = [t for t in trials if retry_of(t) == killed]
    assert len(retries) == 1, [(t.number, t.state, retry_of(t)) for t in trials]
    assert retries[0].params == dead.params and trial_status(retries[0]) in ("done", "reused")
    _check_study(trials, budget)


# ---------------------------------------------------------------------------- a killed --workers child


def test_killed_child_of_two_workers_on_the_journal_is_retried_once_and_the_run_ends(proxy_cache, tmp_path):
    out = _run_dir(proxy_cache, tmp_path / "run")
    proc = subprocess.Popen(_command(out, trials=3, epochs=25, extra=("--workers", "2")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    killed = _kill_child_mid_trial(proc, lambda: _trials(_journal(out)) if (out / "study.journal").is_file() else [])
    _end(proc, timeout=150)  # before: the zombie child looked alive and the parent waited forever
    trials = _trials(_journal(out))
    _check_killed_once(trials, killed, 3)
    pids = {t.user_attrs["edg_worker"].split(":")[1] for t in trials}
    assert len(pids) >= 2, f"one journal, two worker processes: trials by pid {pids}"


def test_killed_child_of_two_workers_on_postgresql_is_retried_once_and_the_run_ends(proxy_cache, tmp_path,
                                                                                     postgres):
    out = _run_dir(proxy_cache, tmp_path / "run")
    storage = optuna.storages.RDBStorage(postgres.replace("postgresql://", "postgresql+psycopg2://"))
    # heartbeat every second: the dead child's trial is stale after the 3 s grace period
    cmd = _command(out, trials=3, epochs=25, extra=("--workers", "2", "--storage", postgres, "--study", "child",
                                                    "--heartbeat", "1"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    killed = _kill_child_mid_trial(proc, lambda: _trials(storage, "child"))
    _end(proc, timeout=150)
    _check_killed_once(_trials(storage, "child"), killed, 3)


def test_a_network_whose_worker_is_killed_twice_is_recorded_failed_not_run_a_third_time(proxy_cache, tmp_path):
    out = _run_dir(proxy_cache, tmp_path / "run")
    cmd = _command(out, trials=1, epochs=25)

    def journal():
        return _trials(_journal(out)) if (out / "study.journal").is_file() else []

    first = _kill_mid_trial(cmd, journal)
    second = _kill_mid_trial(cmd, lambda: [t for t in journal() if t.number != first])  # the retry, killed too
    _run(cmd)
    trials = _trials(_journal(out))
    assert [retry_of(t) for t in trials] == [None, first, second], [(t.number, trial_status(t)) for t in trials]
    assert [trial_status(t) for t in trials] == ["stale", "stale", "failed"]
    assert "not run again" in trials[2].user_attrs["edg_reason"] and "edg_metric" not in trials[2].user_attrs
    assert slots(trials, 1).finished == 1


def test_a_zombie_worker_is_dead_to_the_liveness_check():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not reaped: a zombie
        if Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.05)
    start = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19]
    try:
        assert not _alive(f"{socket.gethostname()}:{child.pid}:{start}")
    finally:
        child.wait()
    me = Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19]
    assert _alive(f"{socket.gethostname()}:{os.getpid()}:{me}")


def test_another_users_process_with_another_start_time_is_dead():
    """pid 1 is root's: signalling it is a PermissionError for anyone else, and that must
    not skip the start-time check (a reused pid is not the worker that died)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the check, as another user (root may signal anyone: check as nobody)
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            os.write(write, b"alive" if _alive(f"{socket.gethostname()}:1:999999999") else b"dead")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        assert f.read() == "dead"


def test_a_worker_stopped_by_sigterm_leaves_its_trial_to_run_again_as_the_same_attempt(proxy_cache, tmp_path):
    """SIGTERM (a scheduler stopping the job) is not the network's fault: the trial is
    recorded ``interrupted``, and its re-run does not count toward ``MAX_ATTEMPTS``."""
    out = _run_dir(proxy_cache, tmp_path / "run")
    cmd = _command(out, trials=1, epochs=25)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        running = _await_trial(proc, lambda: _trials(_journal(out)) if (out / "study.journal").is_file() else [],
                               _training, timeout=120)
        assert running is not None, "no trial was seen training"
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            _stop_tree(proc)
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert trial_status(_trials(_journal(out))[running.number]) == "interrupted"

    _run(cmd)
    trials = _trials(_journal(out))
    retry = [t for t in trials if retry_of(t) == running.number]
    assert len(retry) == 1 and trial_status(retry[0]) == "done" and retry[0].user_attrs["edg_attempt"] == 1
    _check_study(trials, 1)


# ---------------------------------------------------------------------------- inside a trial


def test_a_killed_dataloader_worker_is_retried_once_then_recorded_failed(tmp_path):
    """The trial builds the proxy cache, whose backbone pre-training loads data in one
    DataLoader worker; that worker is SIGKILLed (as the out-of-memory killer does) in the
    first attempt and again in the retry."""
    out = tmp_path / "run"  # no cache: every attempt pre-trains
    cmd = _command(out, trials=1, epochs=1, extra=("--proxy", "pretrain_epochs=100", "--proxy", "loader_workers=1"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    killed: list[int] = []
    seen_at_once = 0
    try:
        deadline = time.monotonic() + 150
        while len(killed) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            loaders = [pid for pid in _children(proc.pid) if pid not in killed]
            seen_at_once = max(seen_at_once, len(loaders))
            if loaders:
                os.kill(loaders[0], signal.SIGKILL)
                killed.append(loaders[0])
    finally:
        if len(killed) < 2:
            _stop_tree(proc)
    output = _end(proc, timeout=120)
    assert len(killed) == 2 and seen_at_once == 1, output
    trials = _trials(_journal(out))
    assert len(trials) == 2, [(t.number, trial_status(t), t.user_attrs.get("edg_reason")) for t in trials]
    first, retry = trials

    def names(reason: str, pid: int) -> bool:  # torch's two wordings: "(pid N) is killed", "(pid(s) N) exited"
        return "DataLoader worker (pid" in reason and f" {pid})" in reason

    assert trial_status(first) == "stale" and names(first.user_attrs["edg_reason"], killed[0])
    assert retry_of(retry) == 0 and retry.params == first.params
    assert trial_status(retry) == "failed" and names(retry.user_attrs["edg_reason"], killed[1])
    assert "not retried again" in retry.user_attrs["edg_reason"]
    assert slots(trials, 1).finished == 1


def test_a_candidate_that_raises_is_recorded_failed_with_its_reason_and_not_retried(proxy_cache, tmp_path):
    out = _run_dir(proxy_cache, tmp_path / "run")
    _run(_command(out, trials=2, epochs=1, extra=("--proxy", "lr=1e30")))  # every candidate's loss diverges
    trials = _trials(_journal(out))
    assert [trial_status(t) for t in trials] == ["failed", "failed"]
    assert all("diverged" in t.user_attrs["edg_reason"] for t in trials)
    assert not [t for t in trials if retry_of(t) is not None]


def test_loader_workers_fit_the_cores_left_by_the_search_workers():
    from efficientdet_graph.search.proxy import loader_workers

    for cores in range(1, 65):
        for search in range(1, 65):
            n = loader_workers(search, cores)
            assert 0 <= n <= 2 and search * n <= cores, (search, cores, n)
            if search == 1 and cores >= 3:
                assert n == 2  # a lone search worker keeps the training default
    assert loader_workers(2, 2) == 0  # the 2-core machine: 2 search workers, no loader processes


def test_each_search_worker_trains_on_its_share_of_the_cores():
    from efficientdet_graph.search.proxy import trial_threads

    for cores in range(1, 65):
        for search in range(1, 65):
            n = trial_threads(search, cores)
            assert n >= 1 and (search * n <= cores or n == 1), (search, cores, n)
    assert trial_threads(2, 2) == 1 and trial_threads(1, 2) == 2 and trial_threads(3, 16) == 5


# ---------------------------------------------------------------------------- slots and networks


def test_extending_a_study_that_left_a_surplus_trial_finishes(proxy_cache, tmp_path):
    """Two workers that race for the last slot leave a ``surplus`` trial; raising
    ``--trials`` later must fill the new slot instead of counting the surplus one."""
    out = _run_dir(proxy_cache, tmp_path / "run")
    _run(_command(out, trials=1, epochs=1))
    study = optuna.load_study(study_name="bifpn_edges", storage=_journal(out))
    extra = study.ask()  # what the slower worker of a race leaves behind
    extra.set_user_attr("edg_status", "surplus")
    study.tell(extra, state=TrialState.FAIL)

    proc = subprocess.Popen(_command(out, trials=2, epochs=1, extra=("--workers", "2")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    _end(proc, timeout=120)  # before: finished stayed at 1 of 2 and both workers waited forever
    trials = _trials(_journal(out))
    _check_study(trials, 2)


# A two-command study must draw one network twice, whatever seeds its commands sample
# with (a joining command's sampler is seeded past the trials it finds): a space of one.
ONE_NETWORK = """\
name: one_point
description: One network (a top-down column), so every draw is the same.
kind: edges
levels: [3, 7]
repeat: 1
defaults: {fusion: sum, op: sep_conv, act: swish}
metric: map50
choices: {fusion: [sum], op: [sep_conv]}
nodes:
  - {id: T7, level: 7, inputs: [P7_in]}
  - {id: T6, level: 6, inputs: [P6_in, T7]}
  - {id: T5, level: 5, inputs: [P5_in, T6]}
  - {id: T4, level: 4, inputs: [P4_in, T5]}
  - {id: T3, level: 3, inputs: [P3_in, T4]}
outputs: {3: T3, 4: T4, 5: T5, 6: T6, 7: T7}
"""


def test_two_workers_given_the_same_network_train_it_once(proxy_cache, tmp_path):
    """Two commands draw the same network (a space of one network); the second starts
    while the first trains it, waits for it and takes its result."""
    out = _run_dir(proxy_cache, tmp_path / "run")
    space = tmp_path / "one_point.yaml"  # the study is named after the file
    space.write_text(ONE_NETWORK)
    cmd = _command(out, trials=2, epochs=60, space=str(space))  # a long first trial
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    second = None
    try:
        seen = _await_trial(first, lambda: (_trials(_journal(out), "one_point")
                                            if (out / "study.journal").is_file() else []), _training, timeout=120)
        assert seen is not None, "the first worker was not seen training"
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        _end(second, timeout=150)
        _end(first, timeout=150)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                _stop_tree(p)
    trials = _trials(_journal(out), "one_point")
    _check_study(trials, 2)
    a, b = trials
    assert a.user_attrs["edg_key"] == b.user_attrs["edg_key"]  # one network drawn twice
    assert a.user_attrs["edg_worker"] != b.user_attrs["edg_worker"]
    assert trial_status(a) == "done" and trial_status(b) == "reused" and b.user_attrs["edg_reused_from"] == 0
    assert b.datetime_start < a.datetime_complete  # it drew the network while the first trained it


def test_a_worker_stopped_while_pre_training_the_proxy_backbone_leaves_no_cache(tmp_path):
    """SIGTERM is "save and stop" to the training loop; inside a search worker the cut-short
    pre-training must neither become the proxy cache nor let the worker go on."""
    out = tmp_path / "run"
    cmd = _command(out, trials=1, epochs=1, extra=("--proxy", "pretrain_epochs=100", "--proxy", "loader_workers=0"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while not list((out / "proxy-cache").glob("*.work/pretrain/*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            _stop_tree(proc)
    assert proc.returncode == 130, output
    assert not list((out / "proxy-cache").glob("proxy-*.pt")), output


def test_seed_points_are_enqueued_under_the_study_lock(proxy_cache, tmp_path):
    """Commands started together must enqueue the space's points once: a worker enqueues
    them only while it holds the study lock (held here by the test, as another worker
    that is enqueueing them would), and finds them enqueued after it."""
    out = _run_dir(proxy_cache, tmp_path / "run")
    cmd = [a for a in _command(out, trials=1, epochs=1) if a != "--no-seed-points"]
    with locked(out / ".study.lock"):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        deadline = time.monotonic() + 120
        created = False
        while not created and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                study = optuna.load_study(study_name="bifpn_edges", storage=_journal(out))
                created = "edg_fingerprint" in study.user_attrs
            except KeyError:
                continue
        assert created, proc.communicate()[0] if proc.poll() is not None else "no study"
        time.sleep(2)  # unlocked, the points were enqueued within milliseconds of the study
        assert _trials(_journal(out)) == []
    _end(proc, timeout=120)
    points = Counter(t.user_attrs.get("edg_point") for t in _trials(_journal(out)))
    assert points == {"fpn": 1, "panet": 1, "bifpn": 1}
