"""The HTTP API's request and response bodies (pydantic: bad input becomes a 422 naming the field)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_QUERY_CHARS = 512
MAX_K = 350
MAX_BEAM = 512
MAX_HISTORY = 1000


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="the user's query text")
    user_id: str | None = Field(default=None, min_length=1, max_length=128, description="a known user")
    history: list[int] | None = Field(
        default=None,
        max_length=MAX_HISTORY,
        description="recent item ids, oldest first (overrides the user's log)",
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="items to return")
    beam: int = Field(default=50, ge=1, le=MAX_BEAM, description="beam width of the constrained search")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank")
        return value


class SearchHit(BaseModel):
    item_id: int
    title: str
    score: float
    sid: str


class SearchResponse(BaseModel):
    items: list[SearchHit]
    timing_ms: float
    trie_version: int


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: int
    title: str = Field(min_length=1, max_length=1000)
    brand: str | None = Field(default=None, max_length=200)


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[NewItem] = Field(min_length=1, max_length=10_000)


class AddItemsResponse(BaseModel):
    added: list[SearchHit]
    trie_version: int
    n_items: int


class UserSummary(BaseModel):
    user_id: str
    recent_queries: list[str]
    recent_items: list[SearchHit]
