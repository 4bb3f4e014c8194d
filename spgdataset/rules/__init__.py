"""The semantics, one rule in one place each, as pure numpy functions of plain numbers.

frames.py   the frame and mask rule: T = 1 + samples // hop; frame t lies in [start, stop) iff start <= t * hop < stop
windows.py  the window rule: W and S in frames, starts 0, S, 2S, ..., the content ratio; counts over columns
splits.py   whole files to subsets by a stable hash of the path or of a metadata value
framelabels.py  vak's per-frame labels: nearest centred frames, offsets included, and the labelmap
labels.py   which metadata values are one label, their order, and their JSON form
plan.py     an epoch's order and every rank's and worker's share of it, from (seed, epoch, counts)
"""
