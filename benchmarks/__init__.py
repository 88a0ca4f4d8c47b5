"""Benchmarks of funcnn's hand-written backward rules against autodiff and PyTorch.

Run `python experiments/bench.py --help`. The package is split along its seams:
`cases` (what is measured), `timing` (how), `jax_side` and `torch_side` (the two
frameworks; torch runs in a worker subprocess), `memory` (peak RSS per
configuration, each in its own subprocess), `report` (tables, targets, chart),
`peers` with `peer_models` (the same train steps in Flax and Equinox) and
`pool_versions` (the max pool of several source trees side by side).
"""
