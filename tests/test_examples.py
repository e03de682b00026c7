"""Each example runs at a tiny size, as a user runs it (a subprocess from the repo root).

finetune_blocks.py needs ``blocks=`` (signify.transforms.blocks) and ddp_vote.py needs
``vote=`` (signify.transforms.vote); hf_trainer.py needs transformers (skipped without it).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(args: list[str], timeout: int = 300) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def test_minimal():
    out = _run([sys.executable, str(EXAMPLES / "minimal.py"), "--steps", "10"])
    assert "SignAdam" in out and "step   10" in out


def test_train_gpt(tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    args = [sys.executable, str(EXAMPLES / "train_gpt.py"), "--tiny", "--stochastic"]
    out = _run([*args, "--steps", "3", "--ckpt", ckpt])
    assert "val" in out and "checkpoint written" in out
    out = _run([*args, "--flatten", "--steps", "5", "--ckpt", ckpt])  # resumed, flat buckets
    assert "resumed from" in out and "at step 3" in out and "checkpoint written" in out


def test_finetune_blocks():
    out = _run(
        [
            sys.executable,
            str(EXAMPLES / "finetune_blocks.py"),
            "--tiny",
            "--steps",
            "3",
            "--pretrain-steps",
            "2",
        ]
    )
    assert 'blocks="depth"' in out and "held-out code loss" in out


def test_ddp_vote_two_ranks():
    out = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(EXAMPLES / "ddp_vote.py"),
            "--tiny",
            "--steps",
            "3",
        ]
    )
    assert "parameters identical on all 2 ranks: True" in out


def test_hf_trainer():
    pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate")
    out = _run([sys.executable, str(EXAMPLES / "hf_trainer.py"), "--tiny", "--steps", "3"])
    assert "optimizer: SignAdamW" in out
