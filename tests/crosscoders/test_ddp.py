import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffeval.crosscoders import CrossCoderConfig, load_crosscoder, train_crosscoder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["l1", "batchtopk"])
def test_two_gloo_processes_match_one_process(tmp_path, arch):
    # 2 ranks × 32 rows must equal 1 process × 64 rows (up to float summation order). For BatchTopK
    # this needs the top k·B selection and its EMA threshold to span both ranks; dead_after=5 also
    # brings the auxiliary loss in. Rows come from a few strong directions, so selections are uneven
    # across ranks (a per-rank top k·B/2 would differ).
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(6, 2, 8, generator=gen)
    acts = torch.randn(640, 6, generator=gen).relu() ** 2 @ dirs.reshape(6, -1) + 0.1 * torch.randn(640, 16, generator=gen)
    acts = acts.reshape(640, 2, 8)
    torch.save(acts, tmp_path / "acts.pt")
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=32, k=4, batch_size=64, n_steps=25, lr=3e-3,
                           architecture=arch, l1_coeff=0.01, dtype="float32", dead_after=5)
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(worker), str(tmp_path / "acts.pt"), str(tmp_path / "ddp"), json.dumps(cfg.to_dict())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    single = train_crosscoder(cfg, acts, out=tmp_path / "single", progress=False)
    ddp = load_crosscoder(tmp_path / "ddp")
    for name, p in single.state_dict().items():
        assert torch.allclose(p, ddp.state_dict()[name], atol=1e-5), name
    if arch == "batchtopk":
        assert ddp.threshold > 0 and torch.allclose(ddp.threshold, single.threshold)
