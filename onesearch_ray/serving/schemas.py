"""The HTTP API's request and response bodies (pydantic: bad input becomes a 422 naming the field).

Every rule a request must meet is in its JSON Schema, so a schema-valid request is never refused as
malformed: it is answered, or refused as naming something that does not exist (404), or that
already exists (409), or without the write token (401).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from onesearch_ray.text import MAX_QUERY_CHARS

MAX_K = 350
MAX_BEAM = 512
MAX_HISTORY = 1000
MAX_USERS_PAGE = 1000
MAX_ADD_ITEMS = 10_000  # items one /items request takes
MAX_ITEM_ID = 2**53 - 1  # the largest integer every JSON parser reads exactly
NOT_BLANK = r"\S"  # at least one non-space character
TOKEN_ENV = "ONESEARCH_WRITE_TOKEN"  # the write routes' bearer token, for servers and clients


def _integral_float_to_int(value: Any) -> Any:
    """JSON Schema counts 12.0 as an integer; strict pydantic would not, so whole floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral_float_to_int)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank: only white space")
    return value


# checked by _not_blank, declared as a pattern so the JSON Schema carries the rule
Text = Annotated[str, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": NOT_BLANK})]
# constraints before the validator, or pydantic's JSON Schema loses them (ge/le instead of minimum/maximum)
ItemId = Annotated[int, Field(ge=0, le=MAX_ITEM_ID), BeforeValidator(_integral_float_to_int)]
Beam = Annotated[int, Field(ge=1, le=MAX_BEAM), BeforeValidator(_integral_float_to_int)]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: Text = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, description="the user's query text (not blank)"
    )
    user_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="a known user (404 if unknown)"
    )
    history: list[ItemId] | None = Field(
        default=None,
        max_length=MAX_HISTORY,
        description="recent item ids, oldest first (overrides the user's log; 404 if an id is unknown)",
    )
    k: Int = Field(default=10, ge=1, le=MAX_K, description="items to return")
    beam: Beam | None = Field(
        default=None,
        description="beam width of the constrained search: code prefixes kept at the generator's last "
        "code level before the item step (default: the model's own setting). The response says which "
        "beam ran",
    )


class Item(BaseModel):
    """An item of the live catalogue as the API shows it."""

    item_id: int
    title: str
    sid: str


class SearchHit(Item):
    score: float = Field(
        description="the model's score (the generator's item-step logit), or the BM25 score on /search/bm25"
    )


class SearchResponse(BaseModel):
    items: list[SearchHit]
    timing_ms: float
    trie_version: int = Field(
        description="the live catalogue's version this answer read (it grows with each add)"
    )
    beam: int = Field(description="the beam width that ran (0 for BM25)")
    impression_id: str | None = Field(
        default=None, description="send it back with POST /feedback (null when the server keeps no log)"
    )


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: ItemId
    title: Text = Field(min_length=1, max_length=1000)
    brand: str | None = Field(default=None, max_length=200)


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[NewItem] = Field(min_length=1, max_length=MAX_ADD_ITEMS)


class AddItemsResponse(BaseModel):
    added: list[Item]
    trie_version: int = Field(
        description="the live catalogue's version this answer read (it grows with each add)"
    )
    n_items: int


class UserSummary(BaseModel):
    user_id: str
    recent_queries: list[str]
    recent_items: list[Item]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    impression_id: str = Field(min_length=1, max_length=64, description="from the /search response")
    item_id: ItemId = Field(description="an item that impression showed")
    action: Literal["click", "order"]


class FeedbackResponse(BaseModel):
    event_id: int
    impression_id: str
    item_id: int
    action: str


class ModelSwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(
        min_length=1, max_length=200, description="a model of this run: a name listed by GET /models"
    )


class ModelInfo(BaseModel):
    model: str = Field(description="the model serving now (its directory under the run)")
    available: list[str] = Field(description="models of this run POST /model can switch to")


class Health(BaseModel):
    status: Literal["ok"]
    items: int
    trie_version: int = Field(
        description="the live catalogue's version this answer read (it grows with each add)"
    )
    model: str


class ErrorDetail(BaseModel):
    """A refused request (401, 404, 409): ``detail`` names the problem."""

    detail: str
