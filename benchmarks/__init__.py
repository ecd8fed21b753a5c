"""Speed and memory benchmarks (`make bench`): table to stdout, JSON to benchmarks/results/."""
