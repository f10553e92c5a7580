"""Performance scripts: each runs as `python -m benchmarks.<name>` from the repository root
and prints a short table; `benchmarks/README.md` holds the commands and the results."""
