"""Reading shards: SpectrogramDataset, SpectrogramDatasetRouter and their DataLoader.

source.py     a shard folder, manifest path or shard list (local or s3://) -> manifest + file index
selection.py  the subset's files and their window counts, from the index columns
decode.py     reading one shard: checked against manifest and index, decoded without copies
stages.py     the reader's chain: planned files -> shuffled files -> (batching) -> hand-off
batching.py   chunks of files and batches made by one gather per output
memory.py     chunk memory in huge pages, reused once released
ring.py       batch slots shared with DataLoader workers
prefetch.py   reading ahead in a thread
errorlog.py   skipped shards, counted where the training process sees them
cursor.py     the epoch, the resume point and the items consumed
states.py     a saved state checked field by field before it is taken
config.py     a dataset's choices checked against its shard set (names with suggestions)
reference.py  the reference call: an audio folder's shards built once, then streamed
summary.py    repr() and summary(): what a dataset holds, from the index
dataset.py    SpectrogramDataset: the parts above, wired
schedule.py   the router's schedule as pure functions
compat.py     what datasets must share to be mixed
router.py     SpectrogramDatasetRouter
loader.py     the DataLoader around either, with its batch ring
"""
