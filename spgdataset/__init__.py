"""spgdataset: log-mel spectrogram shards for speech and bioacoustics, streamed as sliding windows.

Where things are (docs/architecture.md has the whole map):
  rules/    the semantics as pure functions: frames and masks, windows, splits, labels, epoch plans
  format/   the shard format: names, tar, member codecs, feature parameters, manifest and index checks
  storage/  where shards live: a local folder or an s3:// prefix, as one storage object (storage.at)
  write/    spg-shard: audio + metadata.json -> shards
  read/     SpectrogramDataset, SpectrogramDatasetRouter and their DataLoader
  show/     spg-inspect: a shard set as numbers and pictures
"""

from . import s3
from .errors import BadInput, ShardError, SpgError
from .format.features import FeatureConfig
from .read.dataset import SpectrogramDataset
from .read.router import SpectrogramDatasetRouter
from .version import __version__
from .write.job import WriteResult, write_shards

__all__ = ["BadInput", "FeatureConfig", "ShardError", "SpectrogramDataset", "SpectrogramDatasetRouter",
           "SpgError", "WriteResult", "s3", "write_shards", "__version__"]
