"""`s3://bucket/prefix` for reading and writing shards, through boto3 (`pip install "spgdataset[s3]"`).

prefix.py    S3Storage: a shard folder at a prefix, read by datasets and written by runs, holding its settings
settings.py  S3Settings, configure() and the environment (read once, where a storage object is built)
client.py    one boto3 client per process and settings; S3 errors as one-line messages naming the URL
stream.py    GetObject as a stream that resumes (Range + If-Match) after a broken connection
cache.py     an optional local shard cache (content-addressed, LRU); shard_stream()
lock.py      a writer's lock on a prefix: a lease made with conditional writes
webdataset.py  webdataset's gopen handler for s3://, added by register_with_webdataset()
urls.py      s3:// addresses

Everything here takes the settings as a value (an S3Storage's), except webdataset's handler, which is given a
URL and reads them then. Users reach configure() and the rest through `spgdataset.s3`.
"""
