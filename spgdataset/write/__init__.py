"""spg-shard: audio (+ metadata.json) in, shards + manifest + index out, in stages.

inputs.py     which files, checked: metadata.json, a folder walk or a list; paths kept inside the root
audio.py      probing headers and decoding audio to mono at the target rate
plan.py       the plan from the headers alone: which file goes into which shard
logmel.py     the log-mel computation
featurize.py  one file in, its tar members and statistics out (FileResult)
pool.py       featurising in parallel processes, results in plan order
shards.py     claiming the output, writing shards and state records, the index and manifest last
report.py     the bad-input report
progress.py   the progress line
job.py        write_shards(): the stages in order
cli.py        the command line
"""
