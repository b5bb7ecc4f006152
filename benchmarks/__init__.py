"""Benchmarks of the method against baselines and a peer, real speed-up, MAC fidelity, sweep
overhead. Each module is a runnable script (``python -m benchmarks.<name> --help``); results and
the commands that made them are in ``benchmarks/RESULTS.md``.
"""
