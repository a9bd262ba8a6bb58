"""Training. Import the module you need:

* :mod:`~hwnas.train.loop`: ``train`` and ``TrainConfig``, the training loop.
* :mod:`~hwnas.train.recipes`: a preset's training recipe (``recipe_config``, ``recipe_flags``).
* :mod:`~hwnas.train.checkpoint`: checkpoint save, load (``weights_only=True``), digest and checks.
"""
