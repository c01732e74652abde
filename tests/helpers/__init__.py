"""Builders the tests share: tiny datasets in the real file formats, bad files, shards, checkpoints, the CLI runner.

Test files import from here (``from helpers.ava import make_ava``), never from one another.
"""
