"""Run by test_ddp under torchrun: train on a saved tensor with gloo and save the result."""

import json
import sys

import torch
import torch.distributed as dist

from diffeval.crosscoders import CrossCoderConfig, train_crosscoder

if __name__ == "__main__":
    acts_path, out, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    train_crosscoder(CrossCoderConfig.from_dict(json.loads(cfg_json)), torch.load(acts_path), out=out, progress=False)
    dist.destroy_process_group()
