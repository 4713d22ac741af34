"""Serving logic (no Ray): request schemas and the search service the Ray Serve app wraps."""

from onesearch_ray.serving.schemas import AddItemsRequest, NewItem, SearchRequest, SearchResponse
from onesearch_ray.serving.service import SearchService, UnknownUserError

__all__ = [
    "AddItemsRequest",
    "NewItem",
    "SearchRequest",
    "SearchResponse",
    "SearchService",
    "UnknownUserError",
]
