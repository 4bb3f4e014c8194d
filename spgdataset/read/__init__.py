"""Reading shards: SpectrogramDataset, SpectrogramDatasetRouter and their DataLoader.

source.py     a shard folder, manifest path or shard list (local or s3://) -> typed manifest + file index
options.py    a dataset's configuration as frozen, typed values
config.py     a dataset's arguments checked against its shard set (names with suggestions) -> its configuration
selection.py  the subset's files and their window counts, from the index columns
decode.py     reading one shard: checked against manifest and index, decoded without copies
records.py    a decoded file with its kept windows; what each window carries
framelabels.py  the labelmap and each file's frame labels (a segment's as its recording has them)
stages.py     the reader's chain: planned files -> shuffled files
chunks.py     decoded files laid end to end, windows arranged in a shuffled order
batching.py   batches made by one gather per output
batches.py    finished batches: rows, concatenation, single windows
transport.py  how items leave the pipeline: batch memory, gatherer threads, read-ahead, ring slots
access.py     random access: window i by its file's byte range, a map-style Dataset
memory.py     chunk memory in huge pages, reused once released
ring.py       batch slots shared with DataLoader workers
prefetch.py   reading ahead in a thread
errorlog.py   skipped shards, counted where the training process sees them
cursor.py     the epoch, the resume point and the items consumed
states.py     a saved state checked field by field before it is taken
reference.py  the reference call: an audio folder's shards built once, then streamed
summary.py    repr() and summary(): what a dataset holds, from the index
stream.py     the epoch-stream protocol dataset and router share (stream, resume, len, loader)
dataset.py    SpectrogramDataset: the parts above, wired
schedule.py   the router's schedule as pure functions
compat.py     what datasets must share to be mixed
router.py     SpectrogramDatasetRouter
loader.py     the DataLoader around either, with its batch ring
"""
