"""`torchrun --nproc-per-node 2 tamp prune ...` as a user types it (gloo, CPU): the same masks as one
process (bit for bit for the Wanda family, whose statistics are gathered per sample), one set of
files written by rank 0, and a run killed in the middle of the masks stage resumes to the same bits.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tampkit.store.artifacts import MASKS_FILE, load_masks
from tampkit.store.block_store import KILL_ENV

ARGS = ("--model", "tiny-llava-next", "--method", "tamp", "--sparsity", "0.5", "--nsamples", "5", "--no-progress")


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    tamp = shutil.which("tamp") or str(Path(sys.executable).with_name("tamp"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", _port(), tamp, "prune", *args]
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)


def _single(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tampkit.cli", "prune", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=600)


def _masks(folder: Path) -> dict[str, torch.Tensor]:
    return load_masks(folder / MASKS_FILE)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("single")
    done = _single(*ARGS, "--out", "out", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return _masks(root / "out")


def test_two_ranks_give_the_one_process_masks_and_one_report(tmp_path: Path, single) -> None:
    done = _torchrun(*ARGS, "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    masks = _masks(tmp_path / "out")
    assert masks.keys() == single.keys() and all(torch.equal(masks[k], single[k]) for k in masks)
    assert done.stdout.count("wrote ") == 1  # rank 0 reports; rank 1 says nothing
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the temporary store is gone, nothing else left


def test_a_kill_in_the_masks_stage_resumes_to_the_same_masks(tmp_path: Path, single) -> None:
    killed = _torchrun(*ARGS, "--workdir", "store", "--out", "out", cwd=tmp_path,
                       env={**os.environ, KILL_ENV: "masks:1"})
    assert killed.returncode != 0 and not (tmp_path / "out").exists()
    blocks = sorted(p.name for p in (tmp_path / "store" / "masks").glob("block_*.safetensors"))
    assert blocks == ["block_000.safetensors", "block_001.safetensors"]
    resumed = _torchrun(*ARGS, "--workdir", "store", "--out", "out", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    masks = _masks(tmp_path / "out")
    assert all(torch.equal(masks[k], single[k]) for k in single)
