"""Ray-backed harness: one experiment or a sweep through Flower's simulation engine.

`python -m simulation run ...` starts a private simulation SuperLink on a free loopback
port, submits the RobustFL app with `flwr run`, follows it with a progress display and stops
every process it started. The centralized baseline is the same run with one supernode.
"""
