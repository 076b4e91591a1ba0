"""The background training worker: coalescing, failures, hooks; and one training run against a mocked SDK."""

from __future__ import annotations

import threading

import pytest

from ml_backend.labelstudio.worker import TrainingOutcome, TrainingRequest, TrainingRun, TrainingWorker


class GatedTrainer:
    """A fake training function that blocks until released, so events can arrive during a run."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.calls: list[TrainingRequest] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fail_on = fail_on or set()

    def __call__(self, request: TrainingRequest) -> TrainingOutcome:
        self.calls.append(request)
        self.started.release()
        assert self.release.acquire(timeout=10), "test never released the run"
        if len(self.calls) in self.fail_on:
            raise RuntimeError("disk full")
        return TrainingOutcome(f"decomp-v{len(self.calls)}", {"val_miou": 0.5})


@pytest.fixture
def trainer() -> GatedTrainer:
    return GatedTrainer()


@pytest.fixture
def worker(trainer: GatedTrainer):
    worker = TrainingWorker(trainer)
    yield worker
    for _ in range(10):
        trainer.release.release()
    worker.stop(timeout=5)


def test_events_during_a_run_coalesce_into_exactly_one_follow_up(worker, trainer) -> None:
    assert worker.submit("1", "START_TRAINING") == "queued"
    assert trainer.started.acquire(timeout=5)
    outcomes = [worker.submit("1", f"ANNOTATION_CREATED#{n}") for n in range(10)]
    assert outcomes == ["queued"] + ["coalesced"] * 9
    assert worker.snapshot()["running"]["reasons"] == ["START_TRAINING"]
    assert len(worker.snapshot()["pending"]) == 1

    trainer.release.release()
    assert trainer.started.acquire(timeout=5)
    trainer.release.release()
    assert worker.wait_until_idle(timeout=5)

    assert len(trainer.calls) == 2
    assert trainer.calls[1].reasons == tuple(f"ANNOTATION_CREATED#{n}" for n in range(10))
    snapshot = worker.snapshot()
    assert snapshot["counts"] == {"requested": 11, "coalesced": 9, "succeeded": 2, "failed": 0}
    assert [run["model_version"] for run in snapshot["recent_runs"]] == ["decomp-v1", "decomp-v2"]
    assert snapshot["running"] is None and snapshot["pending"] == []


def test_waiting_requests_merge_from_scratch(worker, trainer) -> None:
    worker.submit("1", "first")
    assert trainer.started.acquire(timeout=5)
    worker.submit("1", "ANNOTATION_CREATED")
    worker.submit("1", "START_TRAINING", from_scratch=True)
    trainer.release.release()
    trainer.release.release()
    assert worker.wait_until_idle(timeout=5)
    assert trainer.calls[1].from_scratch is True


def test_projects_are_served_in_arrival_order(worker, trainer) -> None:
    worker.submit("1", "a")
    assert trainer.started.acquire(timeout=5)
    worker.submit("2", "b")
    worker.submit("3", "c")
    worker.submit("2", "d")
    for _ in range(3):
        trainer.release.release()
    assert worker.wait_until_idle(timeout=5)
    served = [(call.project_id, call.reasons) for call in trainer.calls]
    assert served == [("1", ("a",)), ("2", ("b", "d")), ("3", ("c",))]


def test_a_failed_run_is_recorded_and_hooks_only_follow_success(trainer) -> None:
    trainer.fail_on = {1}
    finished: list[TrainingRun] = []
    trained: list[TrainingRun] = []
    worker = TrainingWorker(trainer, on_finished=finished.append)
    worker.add_on_trained(trained.append)
    try:
        worker.submit("5", "START_TRAINING")
        trainer.release.release()
        assert worker.wait_until_idle(timeout=5)
        assert [run.status for run in finished] == ["failed"]
        assert finished[0].error == "RuntimeError: disk full"
        assert finished[0].model_version is None
        assert trained == []

        worker.submit("5", "START_TRAINING")
        trainer.release.release()
        assert worker.wait_until_idle(timeout=5)
        assert [run.status for run in finished] == ["failed", "succeeded"]
        assert [run.model_version for run in trained] == ["decomp-v2"]
        assert worker.snapshot()["counts"]["failed"] == 1
    finally:
        worker.stop(timeout=5)


def test_a_broken_hook_does_not_stop_the_worker(worker, trainer) -> None:
    seen: list[str] = []

    def broken(_run: TrainingRun) -> None:
        raise ValueError("adapter down")

    worker.add_on_trained(broken)
    worker.add_on_trained(lambda run: seen.append(run.model_version))
    for _ in range(2):
        worker.submit("1", "START_TRAINING")
        trainer.release.release()
        assert worker.wait_until_idle(timeout=5)
    assert seen == ["decomp-v1", "decomp-v2"]


def test_wait_until_idle_per_project_and_timeout(worker, trainer) -> None:
    assert worker.wait_until_idle(timeout=0.01)
    worker.submit("1", "a")
    assert trainer.started.acquire(timeout=5)
    assert worker.is_busy("1") and not worker.is_busy("2")
    assert worker.wait_until_idle(timeout=0.05, project_id="2")
    assert not worker.wait_until_idle(timeout=0.05, project_id="1")
    trainer.release.release()
    assert worker.wait_until_idle(timeout=5, project_id="1")


def test_a_stopped_worker_refuses_requests(trainer) -> None:
    worker = TrainingWorker(trainer)
    worker.stop(timeout=1)
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit("1", "a")


def test_the_shared_worker_survives_a_raising_run_and_merges_what_waits() -> None:
    from ml_backend.background import CoalescingWorker

    gate, runs = threading.Event(), []

    def run(key: str, request: frozenset[int]) -> None:
        assert gate.wait(5)
        runs.append((key, sorted(request)))
        if key == "bad":
            raise ValueError("Label Studio answered 500")

    worker = CoalescingWorker(run, frozenset.union, name="test-worker")
    try:
        assert worker.submit("bad", frozenset({1})) == "queued"
        assert worker.submit("good", frozenset({2})) == "queued"
        assert worker.submit("good", frozenset({3})) == "coalesced"
        assert worker.pending()[-1] == ("good", frozenset({2, 3}))
        gate.set()
        assert worker.wait_until_idle(timeout=5)
        assert runs == [("bad", [1]), ("good", [2, 3])]
        assert not worker.is_busy()
    finally:
        worker.stop(timeout=5)
