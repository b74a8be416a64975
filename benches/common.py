"""What every bench shares: its command line (each bench's own options plus --device) and a seeded start."""

from __future__ import annotations

import argparse
from typing import Any

import torch


def parse(doc: str, options: dict[str, Any]) -> tuple[argparse.Namespace, torch.device]:
    """Parse `--name value` options (defaults as given, plus `--device cpu`); seed torch; return (args, device)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in {**options, "device": "cpu"}.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = ap.parse_args()
    torch.manual_seed(0)
    return args, torch.device(args.device)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer around GPU work reads nothing without it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
