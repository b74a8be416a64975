import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crosscoders import CrossCoderBase, CrossCoderConfig, train_crosscoder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    # L1 has no batch-coupled selection, so 2 ranks × 32 rows must equal 1 process × 64 rows exactly
    # (up to float summation order). BatchTopK picks its top k·B within each rank's share instead.
    acts = torch.randn(640, 2, 8)
    torch.save(acts, tmp_path / "acts.pt")
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(worker), str(tmp_path / "acts.pt"), str(tmp_path / "ddp"), "l1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=32, k=4, batch_size=64, n_steps=25, lr=3e-3,
                           architecture="l1", l1_coeff=0.01)
    single = train_crosscoder(cfg, acts, out=tmp_path / "single", progress=False)
    ddp = CrossCoderBase.load(tmp_path / "ddp")
    for name, p in single.state_dict().items():
        assert torch.allclose(p, ddp.state_dict()[name], atol=1e-5), name
