"""Request and response models of the prediction API: closed objects, JSON types taken
literally, and ids that follow :mod:`recsys.ids`; FastAPI derives the OpenAPI from them.
Responses are read from the typed results of :mod:`recsys.ranking`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from recsys.ids import MAX_EVENT_TYPE_LENGTH, MAX_ID_LENGTH, forbidden_character, id_problem
from recsys.ranking import Filters, ItemScores, Ranking
from serving.scorer import MAX_K, MAX_LIST, MAX_VALUE

# The id rule of recsys.ids, said in the contract too (ASCII escapes, as JSON Schema reads them).
ID_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]+$"
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"


def _valid_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _valid_text(value: str) -> str:
    bad = forbidden_character(value)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found {bad})")
    return value


Id = Annotated[
    str,
    AfterValidator(_valid_id),
    Field(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN}),
]
Text = Annotated[
    str,
    AfterValidator(_valid_text),
    Field(max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": TEXT_PATTERN}),
]


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: any number with no fraction (``3.0`` too), never a string."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _json_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


# Constraints come before the validator, so the JSON Schema carries them.
Integer = Annotated[int, BeforeValidator(_json_integer)]
Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_json_number)]
K = Annotated[
    int,
    Field(ge=1, le=MAX_K, description="How many items (1-1000)."),
    BeforeValidator(_json_integer),
]
Value = Annotated[
    float,
    Field(ge=-MAX_VALUE, le=MAX_VALUE, allow_inf_nan=False),
    BeforeValidator(_json_number),
]
Flag = Annotated[bool, Strict()]


def _keys_match_ids(schema: dict[str, Any]) -> None:
    """Attribute names follow the text rule: say it with ``propertyNames``."""
    schema.pop("patternProperties", None)
    schema["additionalProperties"] = {
        "anyOf": [
            {"type": "string", "maxLength": MAX_ID_LENGTH, "pattern": TEXT_PATTERN},
            {"type": "integer"},
            {"type": "boolean"},
            {"type": "number"},
        ]
    }
    schema["propertyNames"] = {"maxLength": MAX_ID_LENGTH, "pattern": TEXT_PATTERN}


# Requests ---------------------------------------------------------------------------------


class Closed(BaseModel):
    """A request object: unknown fields are refused, and no value is coerced to another
    JSON type (``0`` is not ``false``, ``\"3\"`` is not ``3``)."""

    model_config = ConfigDict(extra="forbid")


class FiltersIn(Closed):
    """Item filters; genre, year, price and attribute filters are backfilled when too strict."""

    include_genres: list[Text] = Field(
        default_factory=list, max_length=100, description="Keep items with any of these genres."
    )
    exclude_genres: list[Text] = Field(
        default_factory=list, max_length=100, description="Drop items with any of these genres."
    )
    exclude_items: list[Id] = Field(
        default_factory=list, max_length=MAX_LIST, description="Never return these item ids."
    )
    attributes: dict[Text, Text | Flag | Integer | Number] = Field(
        default_factory=dict,
        max_length=20,
        description="Item attributes that must match.",
        json_schema_extra=_keys_match_ids,
    )
    min_year: Integer | None = None
    max_year: Integer | None = None
    min_price: Number | None = None
    max_price: Number | None = None

    def to_filters(self) -> Filters:
        return Filters(
            include_genres=tuple(self.include_genres),
            exclude_genres=tuple(self.exclude_genres),
            exclude_items=tuple(self.exclude_items),
            attributes=dict(self.attributes),
            min_year=self.min_year,
            max_year=self.max_year,
            min_price=self.min_price,
            max_price=self.max_price,
        )


def filters_of(filters: FiltersIn | None) -> Filters:
    return filters.to_filters() if filters is not None else Filters()


class RecommendIn(Closed):
    user_id: Id
    k: K = 10
    exclude_seen: Flag = True
    filters: FiltersIn | None = None
    explain: Flag = False


RecommendationId = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{32}$",
        description="The `recommendation_id` of the response that showed the item.",
    ),
]
WHO = "Who is shown the list, for attribution: a signed-in user, or an anonymous session."


class SessionIn(Closed):
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_LIST)
    k: K = 10
    filters: FiltersIn | None = None
    explain: Flag = False
    session_id: Id | None = Field(default=None, description=WHO)
    user_id: Id | None = Field(default=None, description=WHO)


class SimilarIn(Closed):
    item_id: Id
    k: K = 10
    filters: FiltersIn | None = None
    user_id: Id | None = Field(default=None, description=WHO)
    session_id: Id | None = Field(default=None, description=WHO)


class ScoreIn(Closed):
    user_id: Id
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_LIST)


class EventIn(Closed):
    user_id: Id
    item_id: Id
    event_type: Annotated[
        str,
        AfterValidator(_valid_id),
        Field(
            min_length=1,
            max_length=MAX_EVENT_TYPE_LENGTH,
            json_schema_extra={"pattern": ID_PATTERN},
        ),
    ] = "interaction"
    value: Value | None = Field(default=None, description="A rating, count or price.")
    recommendation_id: RecommendationId | None = None
    occurred_at: datetime | None = Field(
        default=None, description="ISO 8601; default now. Not after the server's clock."
    )


class EventsIn(Closed):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_LIST)


# Responses --------------------------------------------------------------------------------


def _six_decimals(value: float) -> float:
    return round(value, 6)


# Ranking scores are answered to 6 decimals.
Rounded = Annotated[float, AfterValidator(_six_decimals)]


class Because(BaseModel):
    item_id: str
    title: str | None
    weight: float


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None
    score: Rounded
    matches_filters: bool
    because: list[Because] | None = None


class Recommendations(BaseModel):
    recommendation_id: str
    model_version: int
    arm: str | None = None  # champion or challenger while an experiment runs
    model_family: str
    fallback: str | None
    backfilled: int
    unknown_items: list[str]
    items: list[RecommendedItem]
    warnings: list[str] = Field(default_factory=list)
    user_id: str | None = None
    known_user: bool | None = None

    @classmethod
    def of(cls, ranking: Ranking) -> Recommendations:
        return cls.model_validate(ranking, from_attributes=True)


class SimilarItem(BaseModel):
    item_id: str
    title: str | None
    similarity: Rounded
    matches_filters: bool


class SimilarItems(BaseModel):
    recommendation_id: str
    item_id: str
    model_version: int
    arm: str | None = None
    model_family: str
    backfilled: int
    items: list[SimilarItem]
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, item_id: str, ranking: Ranking) -> SimilarItems:
        """The items nearest ``item_id``: the ranking's scores are their similarities."""
        assert ranking.recommendation_id is not None  # every served list has one
        return cls(
            recommendation_id=ranking.recommendation_id,
            arm=ranking.arm,
            item_id=item_id,
            model_version=ranking.model_version,
            model_family=ranking.model_family,
            backfilled=ranking.backfilled,
            items=[
                SimilarItem(
                    item_id=item.item_id,
                    title=item.title,
                    similarity=item.score,
                    matches_filters=item.matches_filters,
                )
                for item in ranking.items
            ],
            warnings=list(ranking.warnings),
        )


class ItemScore(BaseModel):
    item_id: str
    score: float


class Scores(BaseModel):
    user_id: str
    model_version: int
    model_family: str
    fallback: str | None
    scores: list[ItemScore]
    unknown_items: list[str]

    @classmethod
    def of(cls, scores: ItemScores) -> Scores:
        return cls.model_validate(scores, from_attributes=True)


class EventsRecorded(BaseModel):
    inserted: int
    duplicates: int
    new_users: int
    new_items: int


class ModelInfo(BaseModel):
    ready: bool
    model_version: int | None
    model_family: str | None
    source: str | None
    num_items: int | None
    # "exact": every item scored; "index": candidates from the item index (large catalogues).
    scoring: Literal["exact", "index"] | None = None
    loaded_at: float | None
    load_seconds: float | None
    last_reload_error: str | None
    experiment_id: int | None = None
    challenger_version: int | None = None
    challenger_share: float | None = None
    experiment_error: str | None = None


class ReloadOutcome(BaseModel):
    changed: bool
    version: int | None
    previous: int | None = None
    failed: int | None = None
    error: str | None = None
    reason: str | None = None
