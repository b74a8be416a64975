"""diffeval's harness: configuration, the pipeline's stages, the CLI and the model organisms.

Dependencies run one way: `cli` → `pipeline` → `stages` → `suite`, `core`; `organisms` uses `pipeline`
and `core`; `core` (errors, io, configuration, the run directory, model specs) imports nothing of ours.
"""
