"""gpf: Gated Peripheral-Foveal CNN (GPF-CNN) for photo aesthetics.

The import package is assembled from the repository's top-level folders
(``model/``, ``shards/``, ``pipeline/``, ``train/``, ``cli/``); importing it has
no side effects.
"""
from ._version import __version__

__all__ = ["__version__"]
