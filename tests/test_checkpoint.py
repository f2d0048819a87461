"""minimoe.checkpoint: round trips, atomic saves, damaged and foreign files named, the checkpoint home."""

import os
import stat

import pytest
import torch

from _train import TASK, quick, tiny
from minimoe.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint
from minimoe.config import ModelConfig
from minimoe.train import optimizer_for, train


def test_checkpoint_round_trip(tmp_path):
    cfg = quick(steps=4)
    model = tiny()
    optimizer = optimizer_for(model, cfg)
    history = train(model, TASK, cfg, optimizer=optimizer)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, optimizer, history)
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    restored, optimizer_state, restored_history, step, extra = load_checkpoint(path)
    assert restored.cfg == model.cfg and step == 4 and extra == {}
    assert restored_history == history
    tokens, _ = TASK(0, 2, 16, torch.Generator().manual_seed(1))
    model.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(tokens).logits, model(tokens).logits)
    # the optimizer state resumes training exactly
    restored_optimizer = optimizer_for(restored, cfg)
    restored_optimizer.load_state_dict(optimizer_state)
    more = quick(steps=3, warmup=0)
    assert train(restored, TASK, more, restored_optimizer).loss == train(model, TASK, more, optimizer).loss


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny()
    path = save_checkpoint(tmp_path / "model.pt", model)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny(seed=1))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="weights.pt is not a minimoe checkpoint"):
        load_checkpoint(path)


def _corrupt(kind: str, path):
    data = bytearray(path.read_bytes())
    if kind == "empty":
        data = b""
    elif kind == "truncated":
        data = data[:len(data) // 3]
    elif kind == "zeroed":
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    elif kind == "cut header":
        data = data[:10]
    elif kind == "old version":
        data = data.replace(b"version 2", b"version 1", 1)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind, message", [
    ("empty", r"ckpt.pt is empty \(0 bytes\)"),
    ("truncated", r"ckpt.pt is corrupt: the sha256"),
    ("zeroed", r"ckpt.pt is corrupt: the sha256"),
    ("cut header", r"ckpt.pt is truncated"),
    ("old version", r"ckpt.pt has format version 1"),
])
def test_load_rejects_damaged_files_naming_the_path_and_the_problem(tmp_path, kind, message):
    path = save_checkpoint(tmp_path / "ckpt.pt", tiny())
    _corrupt(kind, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_load_rejects_weights_that_do_not_fit_the_config(tmp_path, monkeypatch):
    model = tiny()
    other = ModelConfig.from_preset("tiny-v3", vocab_size=TASK.vocab_size + 1)
    monkeypatch.setattr(model, "cfg", other)
    path = save_checkpoint(tmp_path / "ckpt.pt", model)
    with pytest.raises(CheckpointError, match="ckpt.pt: its weights do not fit its config"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_dir_is_overridable_and_outside_the_package(monkeypatch, tmp_path):
    import minimoe

    monkeypatch.setenv("MINIMOE_HOME", str(tmp_path / "home"))
    assert checkpoint_dir() == tmp_path / "home"
    monkeypatch.delenv("MINIMOE_HOME")
    assert str(checkpoint_dir()).endswith(os.path.join(".cache", "minimoe"))
    assert os.path.dirname(minimoe.__file__) not in str(checkpoint_dir())
