"""The job queue's order and a command's share of it (search/jobs.py), on a real journal.

A job put back (interrupted, or lost with a dead worker) must be taken before the jobs
queued after it, or a build stopped at a deadline leaves its first networks short of
seeds while later ones start; a command that names some of a queue's jobs (the
noise-floor run in a folder that also holds the full table) must run those and stop."""

from __future__ import annotations

import pytest

from efficientdet_graph.search.jobs import JobQueue


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    q = JobQueue("q", tmp_path, heartbeat=0.2)
    assert q.add([(k, {"n": i}) for i, k in enumerate("abcde")]) == 5
    return q


def test_jobs_are_taken_in_the_order_they_were_added(queue):
    assert [queue.claim().key for _ in range(5)] == list("abcde")
    assert queue.claim() is None


def test_an_interrupted_job_keeps_its_place_ahead_of_later_ones(queue):
    first, second = queue.claim(), queue.claim()
    assert (first.key, second.key) == ("a", "b")

    def stop(job):
        raise KeyboardInterrupt

    # put "a" back the way a SIGTERM does (work() re-raises after requeueing)
    with pytest.raises(KeyboardInterrupt):
        queue.work(stop, keys={"c"})  # claims "c" and is stopped on it
    queue._interrupted(first)
    # "a" and "c" are waiting again, and come before "d" and "e", in their first order
    assert [queue.claim().key for _ in range(4)] == ["a", "c", "d", "e"]


def test_a_job_put_back_twice_keeps_its_first_place(queue):
    a = queue.claim()
    queue._interrupted(a)
    a2 = queue.claim()
    assert a2.key == "a" and a2.trial_id != a.trial_id
    queue._interrupted(a2)
    assert queue.claim().key == "a"  # not behind b..e


def test_work_with_keys_runs_those_jobs_only_and_returns(queue):
    ran = []
    n = queue.work(lambda job: (ran.append(job.key) or 1.0, {}), keys={"b", "d"}, poll=0.05)
    assert n == 2 and ran == ["b", "d"]
    counts = queue.counts()
    assert counts.get("done") == 2 and counts.get("waiting") == 3
    # a command's own counts: its jobs only, and those not in the queue yet
    assert queue.counts({"b", "c", "x", "y"}) == {"done": 1, "waiting": 1, "not queued": 2}
    # without keys, the rest, in order
    n = queue.work(lambda job: (ran.append(job.key) or 1.0, {}), poll=0.05)
    assert ran == ["b", "d", "a", "c", "e"]


def test_opening_a_queue_again_writes_nothing_to_its_journal(queue, tmp_path):
    """Every report (`edg search reference --report`) opens the queue; it used to append a
    create-study record to the committed journal each time."""
    journal = tmp_path / "jobs.journal"
    size = journal.stat().st_size
    again = JobQueue("q", tmp_path)
    assert journal.stat().st_size == size
    assert [again.claim().key for _ in range(5)] == list("abcde")  # the same queue, not a new one
