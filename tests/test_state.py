"""ProjectState: the per-project folder survives re-creation of the object and kills at any instant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ml_backend.labelstudio import state as state_module
from ml_backend.labelstudio.state import (
    KEPT_RUNS,
    KEPT_VERSIONS,
    ProjectState,
    StateError,
    project_key,
    read_json,
    write_json_atomic,
)


def _save_fake_checkpoint(state: ProjectState, version: str) -> None:
    path = state.checkpoint_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(version.encode())


@pytest.mark.parametrize(
    ("sent", "expected"),
    [("12.1700000000", "12"), ("12", "12"), (12, "12"), (None, "default"), ("", "default")],
)
def test_project_key_accepts_label_studio_forms(sent: object, expected: str) -> None:
    assert project_key(sent) == expected


@pytest.mark.parametrize("sent", ["../etc", "a/b", 1.5, True, ["12"], "12 13"])
def test_project_key_rejects_what_could_escape_model_dir(sent: object) -> None:
    with pytest.raises(ValueError, match="project"):
        project_key(sent)


def test_fresh_project_serves_the_initial_version_without_a_checkpoint(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, "3.1700000")
    assert state.root == tmp_path.resolve() / "3"
    assert state.current_version() == "decomp-v0"
    assert state.next_version() == "decomp-v0"
    assert state.current_checkpoint() is None
    assert state.versions() == []
    assert not state.root.exists(), "reading must not create files"


def test_published_versions_survive_recreation_and_old_ones_are_pruned(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 7)
    total = KEPT_VERSIONS + 2
    for _ in range(total):
        version = state.next_version()
        _save_fake_checkpoint(state, version)
        state.publish_version(version, {"val_miou": 0.5})

    reopened = ProjectState(tmp_path, "7.123")
    newest = f"decomp-v{total - 1}"
    assert reopened.current_version() == newest
    assert reopened.current_checkpoint() == reopened.checkpoint_path(newest)
    assert reopened.next_version() == f"decomp-v{total}"
    listed = [entry["version"] for entry in reopened.versions()]
    assert listed == [f"decomp-v{n}" for n in range(total - 1, total - 1 - KEPT_VERSIONS, -1)]
    assert reopened.versions()[0]["metrics"] == {"val_miou": 0.5}
    assert not reopened.checkpoint_path("decomp-v0").exists()
    assert not reopened.checkpoint_path("decomp-v1").exists()
    assert reopened.checkpoint_path("decomp-v2").exists()


def test_publishing_without_a_saved_checkpoint_is_refused(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 1)
    with pytest.raises(StateError, match="checkpoint"):
        state.publish_version("decomp-v0")
    assert state.current_version() == "decomp-v0"


def test_a_crash_during_a_write_keeps_the_previous_version(tmp_path: Path, monkeypatch) -> None:
    state = ProjectState(tmp_path, 1)
    _save_fake_checkpoint(state, "decomp-v0")
    state.publish_version("decomp-v0")
    _save_fake_checkpoint(state, "decomp-v1")

    def killed(*_args: object) -> None:
        raise SystemExit("killed before the rename")

    monkeypatch.setattr(state_module.os, "replace", killed)
    with pytest.raises(SystemExit):
        state.publish_version("decomp-v1")
    monkeypatch.undo()

    reopened = ProjectState(tmp_path, 1)
    assert reopened.current_version() == "decomp-v0"
    assert [p.name for p in reopened.root.iterdir() if p.name.endswith(".tmp")] == []


def test_a_process_killed_while_writing_leaves_a_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "version.json"
    writer = textwrap.dedent(
        f"""
        from pathlib import Path
        from ml_backend.labelstudio.state import write_json_atomic
        target = Path({str(target)!r})
        n = 0
        while True:
            write_json_atomic(target, {{"n": n, "padding": "x" * 200000}})
            n += 1
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer])
    try:
        deadline = time.monotonic() + 30
        while read_json(target) is None or read_json(target)["n"] < 3:
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    payload = json.loads(target.read_text())
    assert payload["n"] >= 3
    assert payload["padding"] == "x" * 200000


def test_corrupt_version_file_names_itself(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 1)
    state.root.mkdir(parents=True)
    (state.root / "version.json").write_text("{not json")
    with pytest.raises(StateError, match="version.json"):
        state.current_version()
    write_json_atomic(state.root / "version.json", {"current": "x"})
    with pytest.raises(StateError, match="history"):
        state.current_version()


def test_annotation_counter_triggers_at_threshold_and_restarts(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 1)
    assert state.count_annotations(1, train_every=3) is False
    assert state.count_annotations(1, train_every=3) is False
    assert ProjectState(tmp_path, 1).annotations_since_last_run() == 2
    assert state.count_annotations(1, train_every=3) is True
    assert state.annotations_since_last_run() == 0
    assert state.count_annotations(5, train_every=3) is True


def test_runs_keep_only_the_most_recent(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 1)
    for n in range(KEPT_RUNS + 3):
        state.record_run({"n": n})
    runs = ProjectState(tmp_path, 1).runs()
    assert [run["n"] for run in runs] == list(range(3, KEPT_RUNS + 3))


def test_pool_statistics_proposals_and_label_config_round_trip(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 4)
    assert state.pool_statistics() is None
    assert state.image_statistics() == {}
    assert state.issued_proposals(10) is None
    assert state.proposals_issued() == 0
    assert state.label_config() is None

    state.write_pool_statistics({"counts": [1, 2]}, "decomp-v3")
    state.record_proposals(10, model_version="decomp-v3", priority=0.6, score=0.4, regions=[{"seed": [1, 2]}])
    state.record_proposals(11, model_version="decomp-v3", priority=0.0, score=1.0, regions=[])
    state.save_label_config("<View/>")

    reopened = ProjectState(tmp_path, 4)
    statistics = reopened.pool_statistics()
    assert statistics["model_version"] == "decomp-v3"
    assert statistics["statistics"] == {"counts": [1, 2]}
    issued = reopened.issued_proposals(10)
    assert (issued["model_version"], issued["priority"], issued["score"]) == ("decomp-v3", 0.6, 0.4)
    assert issued["regions"] == [{"seed": [1, 2]}]
    assert issued["issued_at"] > 0
    assert reopened.proposals_issued() == 2
    assert reopened.label_config() == "<View/>"
    with pytest.raises(ValueError, match="task id"):
        reopened.issued_proposals("../10")


def test_image_statistics_are_replaced_by_a_full_run_and_added_to_by_new_tasks(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 4)
    state.write_image_statistics({1: {"n": 1}, 2: {"n": 2}}, "decomp-v1")
    state.write_image_statistics({3: {"n": 3}, 2: {"n": 20}}, "decomp-v1", keep_others=True)
    assert ProjectState(tmp_path, 4).image_statistics() == {1: {"n": 1}, 2: {"n": 20}, 3: {"n": 3}}
    state.write_image_statistics({3: {"n": 30}}, "decomp-v2")
    assert state.image_statistics() == {3: {"n": 30}}
    assert state.pool_statistics() is None, "the pool totals live in a file of their own"


def test_image_statistics_written_inside_the_pool_file_by_earlier_versions_are_read(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 4)
    state.write_pool_statistics({"tau": 0.7, "images": {"5": {"n": 5}}}, "decomp-v1")
    assert state.image_statistics() == {5: {"n": 5}}
    write_json_atomic(state.root / "image_statistics.json", {"images": ["not", "a", "mapping"]})
    with pytest.raises(StateError, match="image_statistics.json does not map task ids"):
        state.image_statistics()


def test_state_and_the_app_do_not_import_torch() -> None:
    """/setup must answer within Label Studio's 3 s: importing torch alone takes longer on a busy CPU."""
    probe = "import sys, ml_backend.labelstudio.app; print('torch' in sys.modules)"  # app imports state
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"


def test_exclusive_holds_the_project_against_another_process(tmp_path: Path) -> None:
    state = ProjectState(tmp_path, 7)
    probe = textwrap.dedent(
        f"""
        import fcntl, sys
        with open({str(state.root / ".lock")!r}, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                sys.exit(3)
        """
    )
    with state.exclusive():
        held = subprocess.run([sys.executable, "-c", probe])
    released = subprocess.run([sys.executable, "-c", probe])
    assert (held.returncode, released.returncode) == (3, 0)
