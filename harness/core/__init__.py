"""What every other part reads and nothing of ours is imported by: errors, atomic io, the configuration
dataclasses, the run directory with the names of its files, and model specs."""
