"""One writer per output: a second toolkit command given an output another one is writing is refused at once
(one line, exit 2, nothing written), and the lock dies with its holder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from if3d.outputs import OutputError, exclusive_output

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from if3d.outputs import exclusive_output
with exclusive_output(sys.argv[1], "holder-command"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def lock_env(tmp_path, monkeypatch):
    """Locks of this test only (IF3D_LOCK_DIR), for this process and the commands it starts."""
    folder = tmp_path / "locks"
    monkeypatch.setenv("IF3D_LOCK_DIR", str(folder))
    return {**os.environ, "IF3D_LOCK_DIR": str(folder), "PYTHONPATH": str(REPO)}


@pytest.fixture
def hold(lock_env):
    """Start a process that holds the lock on a path until the test ends (or kills it)."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=lock_env, cwd=REPO)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_writer_is_refused_with_the_holder_named(tmp_path, hold):
    out = tmp_path / "runs" / "a"
    holder = hold(out)
    with pytest.raises(OutputError) as err, exclusive_output(out, "second"):
        pytest.fail("the body must not run while another process holds the output")
    message = str(err.value)
    assert "being written by another if3d command" in message
    assert "holder-command" in message
    assert f"process {holder.pid}" in message
    assert str(out) in message


def test_a_link_to_the_output_is_the_same_output_and_a_nested_one_is_not(tmp_path, hold):
    out = tmp_path / "runs" / "a"
    out.mkdir(parents=True)
    link = tmp_path / "alias"
    link.symlink_to(out, target_is_directory=True)
    hold(out)
    with pytest.raises(OutputError), exclusive_output(link, "second"):
        pass
    ran = []
    with exclusive_output(out / "eval", "nested"):
        ran.append(True)
    assert ran == [True]


def test_the_lock_dies_with_its_holder(tmp_path, hold):
    out = tmp_path / "out"
    holder = hold(out)
    with pytest.raises(OutputError), exclusive_output(out, "second"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_output(out, "after the crash") as real:  # no stale lock to clean up
        assert real == out.resolve()


def test_one_process_releases_it_after_the_body(tmp_path, lock_env):
    out = tmp_path / "out"
    with exclusive_output(out, "first"):
        pass
    with exclusive_output(out, "second"):  # released on exit of the first
        pass
    with pytest.raises(RuntimeError, match="boom"), exclusive_output(out, "third"):
        raise RuntimeError("boom")
    with exclusive_output(out, "fourth"):  # released after an exception too
        pass


def _photo(data_dir: Path) -> Path:
    return sorted((data_dir / "fer2013" / "test" / "happy").glob("*.jpg"))[0]


def _commands(data_dir: Path, tmp_path: Path, out: Path) -> dict[str, list[str]]:
    src = tmp_path / "src"
    for split, folder in (("train", "train"), ("test", "test")):
        for cls in ("happy", "sad"):
            dst = src / split / cls
            dst.mkdir(parents=True)
            for f in sorted((data_dir / "fer2013" / folder / cls).glob("*.jpg"))[:2]:
                shutil.copy(f, dst / f.name)
    return {
        "analyze": ["-m", "if3d.analyze", str(_photo(data_dir)), "--out", str(out), "--no-progress"],
        "convert": ["-m", "if3d.data", "convert", "--format", "fer2013-folders", "--src", str(src), "--out", str(out)],
        "test script": ["affectnet_fusion_test.py", "--checkpoint", "default", "--photos", str(src / "test"),
                        "--out", str(out)],
        "crossval": ["-m", "if3d.crossval", "--data", str(src), "--models", "ddamfn", "--out", str(out)],
        "compare3d": ["-m", "if3d.compare3d", "--data", str(tmp_path / "none"), "--out", str(out)],
        "ensemble": ["-m", "if3d.ensemble", "--checkpoints", "default", "default", "--data", str(src),
                     "--fit-split", "train", "--test-split", "test", "--out", str(out)],
    }


@pytest.mark.slow
def test_commands_refuse_an_output_another_command_is_writing(tmp_path, data_dir, hold, lock_env):
    out = tmp_path / "shared_out"
    out.mkdir()
    (out / "earlier.txt").write_text("written by the first command\n")
    hold(out)
    for name, args in _commands(data_dir, tmp_path, out).items():
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=lock_env, cwd=REPO,
                              timeout=300)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        assert any("being written by another if3d command (holder-command" in line for line in lines), (name, lines)
        assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"], name  # nothing written beside it


@pytest.mark.slow
def test_training_refuses_a_run_folder_another_training_is_writing(tmp_path, hold, lock_env):
    from if3d.train.config import TrainConfig
    from if3d.train.engine import fit

    out = tmp_path / "run"
    hold(out)
    cfg = TrainConfig().replace(out=str(out))
    with pytest.raises(OutputError, match="being written by another if3d command"):
        fit(cfg)
    assert not out.exists()
