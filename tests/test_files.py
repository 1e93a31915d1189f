"""Crash-safe writes: plans, reports, ONNX files and OVT banks are whole or absent, never half-written."""

import errno
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import nvcc_pt
from nvcc_pt import FileWriteError, NvccPtError


@pytest.fixture(scope="module")
def mlp():
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    a = nvcc_pt.compile(model, "reram-128x128", example_inputs=(x,), fidelity="noisy", seed=1)
    b = nvcc_pt.compile(model, "reram-128x128", example_inputs=(x,), fidelity="noisy", seed=2)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
    return a, b, x


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _same(cm, path, x):
    with torch.no_grad():
        return torch.equal(nvcc_pt.load(path)(x), cm(x))


# -- a writer killed at random points ---------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    import nvcc_pt
    a, b = nvcc_pt.load(sys.argv[1]), nvcc_pt.load(sys.argv[2])
    print("ready", flush=True)
    while True:
        a.save(sys.argv[3])
        b.save(sys.argv[3])
""")


def test_a_save_killed_at_random_points_leaves_the_old_or_the_new_plan(mlp, tmp_path):
    a, b, x = mlp
    a.save(tmp_path / "src" / "a")
    b.save(tmp_path / "src" / "b")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "plan"
    a.save(target)
    rng = random.Random(0)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "src" / "a"), str(tmp_path / "src" / "b"),
                                  str(target)], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        loaded = nvcc_pt.load(target)  # recovers a plan caught between the two renames
        with torch.no_grad():
            y = loaded(x)
            assert torch.equal(y, a(x)) or torch.equal(y, b(x))
    a.save(target)
    assert _entries(out) == ["plan"]
    assert _same(a, target, x)


def test_a_swap_interrupted_between_the_renames_is_recovered(mlp, tmp_path):
    a, _, x = mlp
    a.save(tmp_path / "plan")
    dead = _dead_pid()
    os.replace(tmp_path / "plan", tmp_path / f".plan.old-{dead}-0123abcd")  # old moved aside ...
    half = tmp_path / f".plan.tmp-{dead}-4567cdef"  # ... the new one never moved in
    half.mkdir()
    (half / "plan.json").write_text("{")
    assert _same(a, tmp_path / "plan", x)
    a.save(tmp_path / "plan")
    assert _entries(tmp_path) == ["plan"]


def test_leftovers_of_dead_writers_are_removed_and_of_live_ones_kept(mlp, tmp_path):
    a, _, _ = mlp
    dead = _dead_pid()
    (tmp_path / f".plan.tmp-{dead}-0123abcd").mkdir()
    (tmp_path / f".r.json.tmp-{dead}-0123abcd").write_text("half")
    live = tmp_path / f".r.json.tmp-{os.getppid()}-89abcdef"
    live.write_text("another writer's")
    a.save(tmp_path / "plan")
    a.report.to_json(tmp_path / "r.json")
    assert _entries(tmp_path) == sorted(["plan", "r.json", live.name])


# -- full disk ------------------------------------------------------------------------------------
def test_a_full_disk_keeps_the_old_plan(mlp, tmp_path, monkeypatch):
    a, b, x = mlp
    a.save(tmp_path / "plan")
    monkeypatch.setattr(pathlib.Path, "write_bytes", _full_disk)
    with pytest.raises(FileWriteError, match="No space left") as e:
        b.save(tmp_path / "plan")
    assert isinstance(e.value, NvccPtError)
    monkeypatch.undo()
    assert _entries(tmp_path) == ["plan"] and _same(a, tmp_path / "plan", x)


@pytest.mark.parametrize("kind", ["json", "html"])
def test_a_full_disk_keeps_the_old_report(mlp, tmp_path, monkeypatch, kind):
    a, _, _ = mlp
    path = tmp_path / f"r.{kind}"
    path.write_text("old report")
    monkeypatch.setattr(pathlib.Path, "write_bytes", _full_disk)
    with pytest.raises(FileWriteError, match="No space left"):
        getattr(a.report, f"to_{kind}")(path)
    assert path.read_text() == "old report" and _entries(tmp_path) == [path.name]


def test_a_full_disk_keeps_the_old_onnx_file(mlp, tmp_path, monkeypatch):
    from nvcc_pt.targets import onnx as onnx_export

    a, _, _ = mlp
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    real_save = onnx_export.ir.save

    def save_then_fill_the_disk(model, where, **kwargs):
        real_save(model, where, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export.ir, "save", save_then_fill_the_disk)
    with pytest.raises(FileWriteError, match="No space left"):
        a.export_onnx(path)
    assert path.read_bytes() == b"old" and _entries(tmp_path) == ["m.onnx"]


def test_a_full_disk_keeps_the_old_ovt_bank(tmp_path, monkeypatch):
    from nvcc_pt.prompt.bank import OVTBank

    bank = OVTBank()
    bank.add("a", torch.ones(2, 4))
    bank.save(tmp_path / "bank")
    bank.add("b", torch.zeros(2, 4))
    monkeypatch.setattr(pathlib.Path, "write_bytes", _full_disk)
    with pytest.raises(FileWriteError, match="No space left"):
        bank.save(tmp_path / "bank")
    monkeypatch.undo()
    assert OVTBank.load(tmp_path / "bank").keys == ["a"] and _entries(tmp_path) == ["bank"]


# -- paths ----------------------------------------------------------------------------------------
def test_symbolic_links_are_refused_and_left_alone(mlp, tmp_path):
    a, b, x = mlp
    a.save(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileWriteError, match=f"symbolic link to {tmp_path / 'real'}"):
        b.save(tmp_path / "link")
    assert _same(a, tmp_path / "link", x)  # loading through a link is fine
    (tmp_path / "r.json").write_text("mine")
    (tmp_path / "r-link.json").symlink_to(tmp_path / "r.json")
    with pytest.raises(FileWriteError, match="symbolic link"):
        a.report.to_json(tmp_path / "r-link.json")
    assert (tmp_path / "r.json").read_text() == "mine"


def test_missing_parent_folders_are_created(mlp, tmp_path):
    a, _, x = mlp
    a.save(tmp_path / "a" / "b" / "plan")
    assert _same(a, tmp_path / "a" / "b" / "plan", x)
    a.report.to_json(tmp_path / "new" / "r.json")
    assert (tmp_path / "new" / "r.json").read_text() == a.report.to_json()


def test_saving_over_a_plan_replaces_it(mlp, tmp_path):
    a, b, x = mlp
    a.save(tmp_path / "plan")
    b.save(tmp_path / "plan")
    assert _same(b, tmp_path / "plan", x) and _entries(tmp_path) == ["plan"]
