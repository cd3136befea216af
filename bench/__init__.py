"""Benchmarks for sdxl-torchserve: served throughput and latency against in-process and one-at-a-time baselines.

python -m bench.run            # CPU, tiny model, every variant, results + chart under bench/results/
"""
