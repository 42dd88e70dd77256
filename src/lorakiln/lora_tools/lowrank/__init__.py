"""Low-rank maths with no file I/O: the `LowRank` factor pair, SVD factorisation, and the rank
choice and per-module reports that resize, extract and merge share.

Imports nothing, so importing a submodule stays as light as that submodule.
"""
