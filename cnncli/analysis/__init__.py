"""Analysis of a network, computed, never trained: conv arithmetic (`arith`, stdlib only: `cnn shape` imports it
without torch), receptive fields (`receptive`), layer summaries with MACs and memory (`summary`), the
classifier -> fully-convolutional conversion (`fcn`) and what `cnn inspect` pictures (`inspection`).

Nothing is imported here, so `cnncli.analysis.arith` stays torch-free.
"""
