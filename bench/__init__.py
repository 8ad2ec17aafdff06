"""RobustFL benchmarks (not tests): throughput, overhead, memory, each as a ratio.

Every benchmark times two things side by side in one process (interleaved repetitions,
medians), so that load from other work on the machine hits both sides alike and cancels in
the ratio. `python -m bench` runs them all and writes JSON + markdown to bench/out/.
"""
