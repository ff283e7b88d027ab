"""Every file the project writes gets an ordinary file's permissions under the user's umask, and
atomic writes never share a temporary file.

The oracle for the mode is the kernel: a file created with open(..., "w") in the same folder under
the same umask. safetensors writes through a 0600 temporary of its own and renames it, which left
model.safetensors and adapter.safetensors readable by their owner only.
"""

import os
import stat
import threading
from pathlib import Path

import pytest

import hub
import runs
import train
from helpers import write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(40, 10, 10))}


@pytest.fixture
def set_umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def ordinary_mode(folder: Path) -> int:
    probe = folder / "probe"
    with open(probe, "w"):
        pass
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


@pytest.mark.parametrize("umask,adapter", [(0o022, False), (0o027, True)], ids=["022-full", "027-adapter"])
def test_every_written_file_has_the_umask_mode(task, tmp_path, set_umask, umask, adapter, monkeypatch):
    set_umask(umask)
    checkpoint_modes = []
    real_save = runs.save_checkpoint

    def save(self):
        real_save(self)
        checkpoint_modes.append(stat.S_IMODE(self.checkpoint_path.stat().st_mode))

    monkeypatch.setattr(runs, "save_checkpoint", save)
    train.main(["--dataset", "acl", "--model", str(task["enc"]), "--data-dir", str(task["data"]), "--out",
                str(tmp_path / "runs"), "--epochs", "2", "--batch-size", "8", "--max-length", "32", "--save",
                *(["--adapter", "--bottleneck", "4"] if adapter else [])])
    want = ordinary_mode(tmp_path)
    assert want == 0o666 & ~umask
    files = sorted(p for p in (tmp_path / "runs").rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert {"config.json", "metrics.jsonl", "result.json"} <= names
    assert ("adapter.safetensors" if adapter else "model.safetensors") in names
    assert not [p for p in files if p.name.endswith(".tmp")], "a temporary file was left behind"
    assert {p.relative_to(tmp_path): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.relative_to(tmp_path): oct(want) for p in files}
    assert checkpoint_modes and set(checkpoint_modes) == {want}


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    """Both write at the same time (a barrier holds each inside its write): each must get its own
    temporary, both renames succeed, and the file holds one writer's whole content."""
    path = tmp_path / "checkpoint.pt"
    both_inside = threading.Barrier(2, timeout=30)
    temporaries, errors = [], []

    def writer(text):
        def write(tmp):
            temporaries.append(tmp)
            Path(tmp).write_text(text)
            both_inside.wait()
        try:
            hub.atomic_write(path, write)
        except Exception as e:  # noqa: BLE001  (collected and asserted on below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(temporaries)) == 2 and all(Path(t).parent == tmp_path for t in temporaries)
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        hub.atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
