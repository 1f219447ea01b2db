"""ixt-stream benchmarks: each part measured against a peer or a physical floor in the same run.

Every benchmark module exposes `run(quick: bool) -> Result`; `python -m bench` runs them all (or
`--only name,...`) and writes `bench/results/<name>.json` plus `bench/results/SUMMARY.md`.
Figures are reported as ratios to the peer/floor measured alongside, so they survive a noisy machine.
"""
