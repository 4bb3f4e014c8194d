"""The shard format: what spg-shard writes and a reader accepts, and nothing about where it is stored.

names.py     file and member names, sample keys, the format version
tar.py       deterministic tar members on the way in, a checked walk on the way out
codec.py     member codecs: msgpack, npy (no pickle, ever), FLAC
features.py  FeatureConfig: the log-mel parameters and their fingerprint
manifest.py  manifest.json checked field by field (and a format-1 index row by row)
index.py     the file index as columns (index.bin): writing, reading over a memory map, checking
"""
