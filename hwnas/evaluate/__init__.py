"""Evaluation. Import the module you need:

* :mod:`~hwnas.evaluate.coco`: ``evaluate`` and pycocotools scores of a detector.
* :mod:`~hwnas.evaluate.wider`: the official WIDER FACE protocol.
* :mod:`~hwnas.evaluate.face`: face detectors scored by that protocol.
* :mod:`~hwnas.evaluate.multiscale`: multi-scale and flip testing merged by box voting.
* :mod:`~hwnas.evaluate.model`: a checkpoint, graph or engine scored on a dataset (``hwnas eval``).
"""
