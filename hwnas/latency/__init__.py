"""Latency: tables of per-unit timings and what is built on them. Import the module you need:

* :mod:`~hwnas.latency.table`: ``LatencyTable`` (load/save, fingerprint, predict, correction), ``profile``.
* :mod:`~hwnas.latency.validate`: the fidelity report (predicted against measured whole models) and plot.
* :mod:`~hwnas.latency.aot`: ahead-of-time TensorRT(-RTX) engines of whole detectors.

The timing itself (one protocol, every backend) is :mod:`hwnas.backends`.
"""
