"""Data layer: schemas, loaders for the real tracks, and synthetic tracks with known ground truth
(English in the onesearch format, Chinese in the KuaiSearch layout).

Pure Python + pyarrow + numpy (no Ray): the pipelines wrap these functions.
"""

from onesearch_ray.data.formats import detect_format, load_track, track_format
from onesearch_ray.data.loaders import (
    FORMAT_FILES,
    Track,
    read_parquet,
    validate_tables,
    write_track,
)
from onesearch_ray.data.schemas import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    JUDGMENT_SCHEMA,
    QUERY_SCHEMA,
    SEQUENCE_SCHEMA,
    SPLITS,
    USER_SCHEMA,
    DataError,
    Event,
    cast_to_schema,
    validate_table,
)
from onesearch_ray.data.synthetic import SyntheticConfig, generate_synthetic, write_synthetic
from onesearch_ray.data.synthetic_kuaisearch import KuaiSearchSynthConfig, write_kuaisearch_synthetic

__all__ = [
    "FORMAT_FILES",
    "INTERACTION_SCHEMA",
    "ITEM_SCHEMA",
    "JUDGMENT_SCHEMA",
    "QUERY_SCHEMA",
    "SEQUENCE_SCHEMA",
    "SPLITS",
    "USER_SCHEMA",
    "DataError",
    "Event",
    "KuaiSearchSynthConfig",
    "SyntheticConfig",
    "Track",
    "cast_to_schema",
    "detect_format",
    "generate_synthetic",
    "load_track",
    "read_parquet",
    "track_format",
    "validate_table",
    "validate_tables",
    "write_kuaisearch_synthetic",
    "write_synthetic",
    "write_track",
]
