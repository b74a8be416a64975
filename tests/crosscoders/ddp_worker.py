"""Run by test_ddp under torchrun: train on a saved tensor with gloo and save the result."""

import sys

import torch
import torch.distributed as dist

from crosscoders import CrossCoderConfig, train_crosscoder

if __name__ == "__main__":
    acts_path, out, arch = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    cfg = CrossCoderConfig(d_model=8, n_models=2, n_latents=32, k=4, batch_size=64, n_steps=25, lr=3e-3,
                           architecture=arch, l1_coeff=0.01)
    train_crosscoder(cfg, torch.load(acts_path), out=out, progress=False)
    dist.destroy_process_group()
