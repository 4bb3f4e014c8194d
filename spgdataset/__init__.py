"""spgdataset: log-mel spectrogram shards for speech and bioacoustics, streamed as sliding windows."""

__version__ = "0.1.0"

from .dataset import SpectrogramDataset  # noqa: E402
from .errors import BadInput, ShardError, SpgError  # noqa: E402
from .features import FeatureConfig  # noqa: E402
from .router import SpectrogramDatasetRouter  # noqa: E402
from .writer import WriteResult, write_shards  # noqa: E402

__all__ = ["BadInput", "FeatureConfig", "ShardError", "SpectrogramDataset", "SpectrogramDatasetRouter",
           "SpgError", "WriteResult", "write_shards", "__version__"]
