"""``ponder.distributed.run`` over Ray actors on a local two-CPU Ray cluster (one per module):
the same records as in process, resume without loss or repeats, and a worker killed mid-run
still leaves every problem exactly one record."""

import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ponder[distributed]')")

from ponder.distributed import run  # noqa: E402
from ponder.distributed.runner import ACTOR_PREFIX  # noqa: E402
from run_helpers import PROBLEMS, SPEC, comparable, read_records  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "in_process.jsonl"
    run(PROBLEMS, SPEC, str(out), progress=False)
    return comparable(read_records(out))


def test_two_workers_give_the_in_process_records(cluster, reference, tmp_path):
    out = tmp_path / "r.jsonl"
    seen = []
    s = run(PROBLEMS, SPEC, str(out), workers=2, progress=False, on_record=seen.append)
    assert (s.written, s.skipped, s.retried_batches, s.workers) == (8, 0, 0, 2)
    recs = read_records(out)
    assert [r["id"] for r in recs] == [r["id"] for r in seen]
    assert comparable(recs) == reference
    assert not [n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX)]  # all stopped


def test_resume_skips_finished_ids(cluster, reference, tmp_path):
    out = tmp_path / "r.jsonl"
    first = run(PROBLEMS[:3], SPEC, str(out), workers=2, progress=False)
    assert first.written == 3
    rest = run(PROBLEMS, SPEC, str(out), workers=2, progress=False)
    assert (rest.written, rest.skipped) == (5, 3)
    recs = read_records(out)
    assert sorted(r["id"] for r in recs) == sorted(p["id"] for p in PROBLEMS)
    assert comparable(recs) == reference


def test_a_killed_worker_loses_no_problem(cluster, reference, tmp_path):
    out = tmp_path / "r.jsonl"
    killed = []

    def kill_one_after_the_first_record(_record):
        if killed:
            return
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))
        victim = ray.get_actor(names[0])
        killed.append(names[0])
        # from another thread, as an outside failure would come, while both workers are busy
        threading.Thread(target=lambda: (time.sleep(0.05), ray.kill(victim, no_restart=True))).start()

    spec = type(SPEC)(**{**SPEC.__dict__, "batch_size": 1})
    s = run(PROBLEMS, spec, str(out), workers=2, progress=False, on_record=kill_one_after_the_first_record)
    recs = read_records(out)
    assert killed and s.retried_batches >= 1, "the kill did not hit a busy worker"
    assert sorted(r["id"] for r in recs) == sorted(p["id"] for p in PROBLEMS)  # each exactly once
    assert comparable(recs) == reference
