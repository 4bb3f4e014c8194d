"""Seeing what a shard set holds: `spg-inspect` (cli.py) summarises a manifest and its index, and draws
spectrograms with their masks and kept windows (plot.py, with matplotlib: `pip install "spgdataset[plot]"`)."""
