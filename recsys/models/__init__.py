"""The model zoo: one file per model, registered here by name (the lower-case file name)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from recsys.data.features import SideInfo
from recsys.errors import RecsysError
from recsys.models import caser, ease, gru4rec, mlp, multvae, neumf, pop, sasrec
from recsys.models.base import BatchKind, Recommender
from recsys.models.space import SearchSpace


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its config dataclass, class, suggested training settings and what
    ``recsys tune`` may vary (its file's ``SEARCH_SPACE``; empty: nothing to tune)."""

    config: type[Any]
    model: type[Recommender]
    train_defaults: dict[str, Any]
    search_space: SearchSpace = field(default_factory=dict)

    @property
    def batch_kind(self) -> BatchKind:
        return self.model.batch_kind


MODELS: dict[str, ModelSpec] = {
    "pop": ModelSpec(pop.PopConfig, pop.Pop, pop.TRAIN_DEFAULTS),
    "ease": ModelSpec(ease.EASEConfig, ease.EASE, ease.TRAIN_DEFAULTS, ease.SEARCH_SPACE),
    "mlp": ModelSpec(mlp.MLPConfig, mlp.MLP, mlp.TRAIN_DEFAULTS, mlp.SEARCH_SPACE),
    "neumf": ModelSpec(neumf.NeuMFConfig, neumf.NeuMF, neumf.TRAIN_DEFAULTS, neumf.SEARCH_SPACE),
    "caser": ModelSpec(caser.CaserConfig, caser.Caser, caser.TRAIN_DEFAULTS, caser.SEARCH_SPACE),
    "gru4rec": ModelSpec(
        gru4rec.GRU4RecConfig, gru4rec.GRU4Rec, gru4rec.TRAIN_DEFAULTS, gru4rec.SEARCH_SPACE
    ),
    "sasrec": ModelSpec(
        sasrec.SASRecConfig, sasrec.SASRec, sasrec.TRAIN_DEFAULTS, sasrec.SEARCH_SPACE
    ),
    "multvae": ModelSpec(
        multvae.MultVAEConfig, multvae.MultVAE, multvae.TRAIN_DEFAULTS, multvae.SEARCH_SPACE
    ),
}


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise RecsysError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    *,
    side: SideInfo | None = None,
    config: Any = None,
) -> Recommender:
    """A fresh model of family ``name`` (default config unless one is given)."""
    model_spec = spec(name)
    factory: Any = model_spec.model  # every model takes (config, num_users, num_items, side)
    built: Recommender = factory(config or model_spec.config(), num_users, num_items, side=side)
    return built


def parse_settings(
    name: str, settings: list[str], train_config_type: type[Any]
) -> tuple[Any, dict[str, Any]]:
    """Split ``key=value`` strings into the model's config and training overrides.

    Values are converted to the field's annotated type; unknown keys and bad values are
    errors that list what is valid.
    """
    model_spec = spec(name)
    model_fields = _typed_fields(model_spec.config)
    train_fields = _typed_fields(train_config_type)
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise RecsysError(f"--set expects key=value, got {item!r}")
        if key in model_fields:
            model_values[key] = _convert(key, raw.strip(), model_fields[key])
        elif key in train_fields:
            train_values[key] = _convert(key, raw.strip(), train_fields[key])
        else:
            valid = ", ".join(sorted(model_fields) + sorted(train_fields))
            raise RecsysError(f"unknown setting {key!r} for {name}; valid keys: {valid}")
    return dataclasses.replace(model_spec.config(), **model_values), train_values


def _typed_fields(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _convert(key: str, raw: str, annotation: Any) -> Any:
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if type(None) in options and raw.lower() in ("none", "null", ""):
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            if option is bool:
                if raw.lower() in ("true", "1", "yes"):
                    return True
                if raw.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(raw)
            if typing.get_origin(option) is typing.Literal:
                if raw in typing.get_args(option):
                    return raw
                raise ValueError(raw)
            if option in (int, float, str):
                return option(raw)
            if typing.get_origin(option) is tuple:
                inner = typing.get_args(option)[0]
                return tuple(inner(part) for part in raw.split(",") if part)
        except ValueError:
            continue
    raise RecsysError(f"bad value {raw!r} for {key}: expected {_describe(annotation)}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))
