"""gpf.workflows: end-to-end runs that chain the commands — the demo, experiments and the synthetic datasets they use.

Above ``train/``: imported only by ``gpf.cli`` and ``benchmarks/`` (and tests), never by the library rooms.
"""
