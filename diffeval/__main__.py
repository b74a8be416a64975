"""`python -m diffeval …` (and `torchrun -m diffeval …`): the same command line as `diffeval`."""

from diffeval.harness.cli import main

main()
