"""spg-shard: audio (+ metadata.json) in, shards + manifest + index out, in stages.

inputs.py     which files, checked: metadata.json, a folder walk or a list; paths kept inside the root
annotations.py  annotation files parsed (simple-seq, Audacity, TextGrid) and vak's labelset
annotated.py  inputs with their annotations: found, filtered by labelset, turned into intervals
audio.py      reading headers and decoding audio to mono at the target rate
resample.py   resampling between any two rates in bounded memory (torchaudio's filter)
blocks.py     a long recording's samples, any range, decoded and resampled block by block
wav.py        plain 16-bit PCM WAV without libsndfile (the common case); the rest goes to libsndfile
headers.py    every input's header, read by the workers once and kept with the run's state
plan.py       the plan from the headers alone: which file (or segment of a long file) goes into which shard
logmel.py     the log-mel computation
linear.py     the linear spectrogram (vak's)
featurize.py  one file in, its tar members and statistics out (FileResult); long files in blocks
tasks.py      the two kinds of task: a run of headers, one whole shard (featurised and written by the worker)
executors.py  where tasks run: this process or local worker processes
cluster.py    where tasks run on Dask (write_shards(client=...), spg-shard --scheduler)
claim.py      claiming the output: one writer at a time (a lock), nothing touched that spgdataset did not write
shards.py     writing shards and state records, which are finished, the index and manifest
report.py     the bad-input report
progress.py   the progress line
job.py        write_shards(): the stages in order
cli.py        the command line
"""
