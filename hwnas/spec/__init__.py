"""The description layer: :class:`~hwnas.spec.arch.Arch` (frozen) and its grammar, the one walk
(``Arch.units()``), the :class:`~hwnas.spec.units.Unit` spec, the search spaces and the named presets.

Nothing here imports torch (tested). Import the module you need:

* :mod:`~hwnas.spec.arch`: ``Arch``, its grammar and the walk.
* :mod:`~hwnas.spec.space`: ``SearchSpace`` (seeded sample / mutate), ``SPACES``, ``get_space``.
* :mod:`~hwnas.spec.units`: ``Unit`` and ``Placed``, the frozen description of one unit.
* :mod:`~hwnas.spec.presets`: hand-designed baselines and face presets as arch strings.
"""
