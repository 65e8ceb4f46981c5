"""One writer per run directory, and what a resume compares: a second writer and a
resume of a live run are refused naming the live process, a SIGKILL leaves no lock, a
resume that finds only corrupt checkpoints refuses and keeps them, a run resumes however
its path is spelled and after a move, data prepared again with other text is refused,
and the temporary folder of a killed prepare is removed (a live one kept)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import ENV, TINY, train_command, wait_for_step

from scratchlm.atomic import remove_stale_temporaries
from scratchlm.builtin import builtin_corpus
from scratchlm.checkpoint import RunInUseError, RunLock
from scratchlm.cli import main
from scratchlm.data import data_fingerprint, prepare, read_meta
from scratchlm.errors import CheckpointError, ConfigError
from scratchlm.train.trainer import Trainer


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _snapshot(run: Path) -> dict[str, bytes | None]:
    """Every file (content) and folder (None) under ``run``, but the lock file."""
    return {
        str(p.relative_to(run)): None if p.is_dir() else p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.name != ".lock"
    }


# -------------------------------------------------------------------------- the lock


def test_a_second_writer_is_refused_naming_the_holder_until_it_lets_go(tmp_path):
    first = RunLock(tmp_path / "run")
    assert first.acquire()
    with pytest.raises(RunInUseError, match=f"process {os.getpid()} "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    with RunLock(tmp_path / "run") as again:
        assert again.held
    assert not again.held
    # Without create, a directory that does not exist is left alone.
    assert RunLock(tmp_path / "new").acquire(create=False) is False
    assert not (tmp_path / "new").exists()


def test_a_trainer_on_a_locked_run_touches_nothing(tiny_config):
    config = tiny_config.replace(
        steps=2, checkpoint_every=1, eval_every=0, sample_tokens=0, warmup_steps=1
    )
    Trainer(config).run()
    run = Path(config.out)
    leftover = run / "checkpoints" / ".step_00000003.0123456789ab.tmp"  # a crashed save's
    leftover.mkdir()
    before = _snapshot(run)
    with RunLock(run), pytest.raises(RunInUseError, match="is being written by process"):
        Trainer(config.replace(steps=4)).run()
    assert _snapshot(run) == before  # no record, no settings, no clean-up
    assert Trainer(config.replace(steps=3)).run().step == 3  # once let go, it resumes


def test_a_run_started_meanwhile_by_another_process_is_not_overwritten(tiny_config):
    config = tiny_config.replace(steps=2, eval_every=0, sample_tokens=0, warmup_steps=1)
    late = Trainer(config)  # the run directory does not exist yet: nothing to lock
    Trainer(config).run()
    before = _snapshot(Path(config.out))
    with pytest.raises(RunInUseError, match="while this one was getting ready"):
        late.run()
    assert _snapshot(Path(config.out)) == before


def test_the_default_pipeline_holds_its_directory(tmp_path):
    from scratchlm.pipeline import DefaultRun, run_default

    with RunLock(tmp_path / "run"), pytest.raises(RunInUseError):
        run_default(DefaultRun(out_dir=tmp_path / "run"), progress=False, echo=print)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]


@pytest.mark.slow
def test_two_writers_and_a_resume_of_a_live_run(prepared, tmp_path):
    """The issue's case: T="scratchlm train ... --out runs/c"; $T & $T --seed 7 & wait."""
    run = tmp_path / "c"
    first = subprocess.Popen(
        train_command(prepared, run, "--steps", "100000"),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_step(first, run, 3)
        second = subprocess.run(
            train_command(prepared, run, "--steps", "150", "--seed", "7"),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        resume = [sys.executable, "-m", "scratchlm", "train", "--resume", str(run)]
        resumed = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
        for refused in (second, resumed):
            err = refused.stderr.strip()
            assert refused.returncode == 2, err
            assert "\n" not in err and f"process {first.pid} (scratchlm train" in err
        assert first.poll() is None  # the first one trains on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130
    steps = [r["step"] for r in _records(run, "train")]
    assert steps == list(range(1, len(steps) + 1))  # one run's records, each once
    assert not [r for r in _records(run, "event") if "resumed" in r["message"]]
    assert json.loads((run / "train_config.json").read_text())["seed"] == 3


@pytest.mark.slow
def test_a_sigkill_leaves_no_lock_behind(prepared, tmp_path):
    run = tmp_path / "k"
    proc = subprocess.Popen(
        train_command(prepared, run, "--steps", "100000"), env=ENV, stdout=subprocess.PIPE
    )
    try:
        wait_for_step(proc, run, 2)
        with pytest.raises(RunInUseError, match=f"process {proc.pid} "):
            RunLock(run).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert f"process {proc.pid} " in (run / ".lock").read_text()  # the file stays behind
    with RunLock(run) as lock:  # but the kernel let the lock go with the process
        assert lock.held


# ------------------------------------------------------------------------ what resumes


def _corrupt(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def test_a_resume_with_only_corrupt_checkpoints_refuses_and_keeps_them(tiny_config, capsys):
    config = tiny_config.replace(
        steps=4, checkpoint_every=2, eval_every=0, sample_tokens=0, warmup_steps=1
    )
    Trainer(config).run()
    run = Path(config.out)
    for checkpoint in (run / "checkpoints").glob("step_*"):
        _corrupt(checkpoint / "model.safetensors")
    before = _snapshot(run)
    with pytest.raises(CheckpointError) as refused:
        Trainer(config.replace(steps=6)).run()
    message = str(refused.value)
    assert "2 checkpoints and none is readable" in message
    assert "step_00000004" in message and "corrupted" in message  # the newest, and why
    assert f"delete {run / 'checkpoints'}" in message and "--out" in message
    assert _snapshot(run) == before  # metrics kept, checkpoints not overwritten

    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "none is readable" in err
    assert _snapshot(run) == before


CLI_FLAGS = [
    "--preset", "tiny", *(f"--model={k}={v}" for k, v in TINY.items()),
    "--context-length", "32", "--batch-size", "4", "--warmup-steps", "1", "--eval-every", "0",
    "--eval-windows", "2", "--sample-tokens", "0", "--checkpoint-every", "1", "--log-every", "1",
    "--device", "cpu", "--quiet",
]  # fmt: skip


def test_a_run_resumes_however_its_path_is_spelled_and_after_a_move(
    prepared, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["train", "--data", str(prepared), "--out", "A/rel1", *CLI_FLAGS, "--steps", "2"]) == 0
    )
    for steps, spelled in ((3, "A/rel1/"), (4, "./A/rel1"), (5, str(tmp_path / "A" / "rel1"))):
        assert main(["train", "--resume", spelled, "--steps", str(steps)]) == 0
    # Moved, with its data copied elsewhere: the same run, the same data.
    (tmp_path / "B").mkdir()
    shutil.move("A/rel1", "B/moved")
    shutil.copytree(prepared, "data-copy")
    assert main(["train", "--resume", "B/moved", "--steps", "6", "--data", "data-copy"]) == 0

    run = tmp_path / "B" / "moved"
    assert [r["step"] for r in _records(run, "train")] == [1, 2, 3, 4, 5, 6]
    resumed = [r["message"] for r in _records(run, "event") if "resumed" in r["message"]]
    assert resumed == [f"resumed from step_{s:08d} (step {s})" for s in (2, 3, 4, 5)]
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["out"], saved["data"]) == ("B/moved", "data-copy")  # where it is now


def test_data_prepared_again_with_other_text_is_refused(prepared, tiny_config, tmp_path):
    text = builtin_corpus().read_text(encoding="utf-8")
    source, data = tmp_path / "corpus.txt", tmp_path / "data"
    tokenizer = prepared / "tokenizer.json"
    source.write_text(text, encoding="utf-8")
    prepare([source], tokenizer, data, val_fraction=0.1, workers=1, progress=False)
    config = tiny_config.replace(
        data=str(data), steps=2, checkpoint_every=1, eval_every=0, sample_tokens=0, warmup_steps=1
    )
    Trainer(config).run()

    source.write_text(text.replace(" the ", " a "), encoding="utf-8")
    prepare([source], tokenizer, data, val_fraction=0.1, workers=1, progress=False, force=True)
    run = Path(config.out)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"step_00000002 was trained on other data"):
        Trainer(config.replace(steps=4)).run()
    assert _snapshot(run) == before


def _rewrite(checkpoint: Path, name: str, change) -> None:
    """Edit one JSON file of a checkpoint and write its manifest again (as an older
    version or a hand edit would have left it: still a valid checkpoint)."""
    from scratchlm.checkpoint.files import MANIFEST, write_manifest

    file = checkpoint / name
    file.write_text(json.dumps(change(json.loads(file.read_text()))))
    (checkpoint / MANIFEST).unlink()
    write_manifest(checkpoint)


def test_checkpoints_without_fingerprints_resume_and_another_model_is_refused(tiny_config):
    config = tiny_config.replace(
        steps=2, checkpoint_every=1, eval_every=0, sample_tokens=0, warmup_steps=1
    )
    Trainer(config).run()
    run = Path(config.out)
    newest = run / "checkpoints" / "step_00000002"
    state = json.loads((newest / "trainer_state" / "state.json").read_text())
    assert set(state["fingerprints"]) == {"data", "tokenizer"}
    # Written before fingerprints were recorded: the tokenizer comes from its file.
    _rewrite(newest, "trainer_state/state.json", lambda s: {**s, "fingerprints": None})
    assert Trainer(config.replace(steps=3)).run().step == 3

    newest = run / "checkpoints" / "step_00000003"
    _rewrite(newest, "config.json", lambda c: {**c, "model": {**c["model"], "n_layers": 3}})
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"step_00000003 holds another model \(n_layers=3"):
        Trainer(config.replace(steps=4)).run()
    assert _snapshot(run) == before


def test_the_data_fingerprint_is_its_content_not_its_place(prepared):
    meta = read_meta(prepared)
    assert meta["fingerprint"] == data_fingerprint(meta)
    # A meta.json written before the fingerprint was recorded gets the same one.
    older = {k: v for k, v in meta.items() if k != "fingerprint"}
    assert data_fingerprint(older) == meta["fingerprint"]
    moved = {**older, "inputs": ["elsewhere"]}
    moved["sources"] = [{**s, "path": "/elsewhere/corpus.txt"} for s in older["sources"]]
    assert data_fingerprint(moved) == meta["fingerprint"]
    edited = {**older, "sources": [{**s, "sha256": "0" * 64} for s in older["sources"]]}
    assert data_fingerprint(edited) != meta["fingerprint"]


# --------------------------------------------------------------- temporary folders

# What a prepare does while it writes: a temporary folder filled, then renamed into place.
# This one stops halfway, as a prepare does when it is killed mid-way.
FILL_AND_WAIT = """
import sys, time
from pathlib import Path
from scratchlm.atomic import write_dir_atomically

def fill(tmp):
    (tmp / "train.bin").write_bytes(bytes(4096))
    print(tmp, flush=True)
    time.sleep(600)

write_dir_atomically(Path(sys.argv[1]), fill)
"""


def test_a_killed_prepare_s_temporary_folder_is_removed_and_a_live_one_kept(prepared, tmp_path):
    out = tmp_path / "data"
    live, killed = (
        subprocess.Popen(
            [sys.executable, "-c", FILL_AND_WAIT, str(out)],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    )
    try:
        live_tmp = Path(live.stdout.readline().strip())
        killed_tmp = Path(killed.stdout.readline().strip())
        killed.kill()
        killed.wait()
        assert killed_tmp.is_dir() and killed_tmp.name.startswith(".data.")
        # Names that are not ours, or not a folder, are never touched.
        others = [tmp_path / ".data.not-ours.tmp", tmp_path / ".other.0123456789ab.tmp"]
        for path in others:
            path.mkdir()
        a_file = tmp_path / ".data.0123456789ab.tmp"
        a_file.write_text("a temporary file")

        prepare(
            [builtin_corpus()], prepared / "tokenizer.json", out, val_fraction=0.1, workers=1,
            progress=False,
        )  # fmt: skip
        assert (out / "meta.json").is_file()
        assert not killed_tmp.exists()
        assert live_tmp.is_dir() and (live_tmp / "train.bin").is_file()
        assert all(p.is_dir() for p in others) and a_file.is_file()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(out) == [live_tmp]  # its process is gone now
