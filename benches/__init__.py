"""Speed benches: each prints a ratio against a baseline run side by side in one process (`python -m benches.<name>`)."""
