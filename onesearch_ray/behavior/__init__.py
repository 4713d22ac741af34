"""Multi-view user behaviour (paper section 2): behaviour-built user IDs, short/long views, cold start.

Pure Python + numpy (no Ray). Sequences are oldest first everywhere.
"""

from onesearch_ray.behavior.index import BehaviorIndex, UserHistory
from onesearch_ray.behavior.views import (
    UserContext,
    behavior_user_sid,
    cold_start_sequence,
    long_term_view,
    recency_weights,
    sliding_windows,
)

__all__ = [
    "BehaviorIndex",
    "UserContext",
    "UserHistory",
    "behavior_user_sid",
    "cold_start_sequence",
    "long_term_view",
    "recency_weights",
    "sliding_windows",
]
