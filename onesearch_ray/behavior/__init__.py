"""Multi-view user behaviour (paper section 2): each user's history at a moment (``index``), the
short-term view (``views``), co-purchase counts for the generator's
co-purchase term (``copurchase``). The generator reads recent items as prompt views
(``generator.prompts``).

Pure Python + numpy (no Ray). Sequences are oldest first everywhere.
"""

from onesearch_ray.behavior.index import BehaviorIndex, UserHistory
from onesearch_ray.behavior.views import UserContext

__all__ = [
    "BehaviorIndex",
    "UserContext",
    "UserHistory",
]
