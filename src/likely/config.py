"""Typed experiment config, read from YAML and validated once at load.

An experiment config says where the logs are and how to read them (`data`), what
each column means (`features`), and later which model to train and how. Every
section is a frozen pydantic model; an invalid file fails at load with the path
of the bad field and what was expected.

Example:
    >>> cfg = ExperimentConfig.model_validate({
    ...     "data": {"path": "logs.csv", "format": "csv", "label": "clicked"},
    ...     "features": [
    ...         {"name": "user_id", "kind": "sparse", "side": "user"},
    ...         {"name": "price", "kind": "dense", "side": "item",
    ...          "transform": "log1p"},
    ...     ],
    ... })
    >>> [f.name for f in cfg.sparse_features], [f.name for f in cfg.dense_features]
    (['user_id'], ['price'])
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """An experiment config that cannot be used, with where and why."""


class Frozen(BaseModel):
    """Base for config sections: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class LogFormat(StrEnum):
    """Layouts the readers understand."""

    CSV = "csv"
    TSV = "tsv"
    PARQUET = "parquet"
    CRITEO = "criteo"
    AVAZU = "avazu"
    LIBFM = "libfm"


class FeatureKind(StrEnum):
    SPARSE = "sparse"
    DENSE = "dense"
    SEQUENCE = "sequence"


class Side(StrEnum):
    """Who a feature describes; recall and serving split features by side."""

    USER = "user"
    ITEM = "item"
    CONTEXT = "context"


class DenseTransform(StrEnum):
    NONE = "none"
    LOG1P = "log1p"
    STANDARDIZE = "standardize"
    QUANTILE = "quantile"


class ErrorPolicy(StrEnum):
    """What a reader does with a malformed row: stop at it, or drop and count."""

    RAISE = "raise"
    SKIP = "skip"


class DataConfig(Frozen):
    """Where the logs are and how to read them.

    Two layouts are supported. With `date_column`, `path` holds every day and a
    target date picks the training window and the evaluation day. Without it,
    `path` is the training set and `test_path`, if given, the test set.
    """

    path: Path = Field(description="log file, folder of files, or glob")
    format: LogFormat
    test_path: Path | None = None
    has_header: bool | None = Field(
        default=None,
        description="text formats: first line names the columns; default true, "
        "false for criteo (raw Criteo files have no header)",
    )
    column_names: list[str] | None = Field(
        default=None, description="names of the columns of a file without a header"
    )
    separator: str | None = Field(
        default=None, description="field separator; default by format"
    )
    label: str = "label"
    date_column: str | None = None
    date_format: str | None = Field(
        default=None,
        description="strptime format of date_column when it is text, e.g. %Y-%m-%d",
    )
    user_column: str | None = None
    probability_column: str | None = Field(
        default=None, description="true click probability, where the data has one"
    )
    window_days: Annotated[int, Field(ge=1, le=366)] = 7
    holdout_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    holdout_seed: int = 0
    on_error: ErrorPolicy = ErrorPolicy.RAISE
    cache_dir: Path = Path(".likely/cache")

    @field_validator("separator")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"separator must be one character, got {value!r}")
        return value

    @property
    def header(self) -> bool:
        """Whether text files start with a header line, after the format default."""
        if self.has_header is not None:
            return self.has_header
        return self.format != LogFormat.CRITEO

    @model_validator(mode="after")
    def _layout(self) -> Self:
        if self.date_column is not None and self.test_path is not None:
            raise ValueError(
                "give either date_column (days in one log, split by target date) "
                "or test_path (a separate test file), not both"
            )
        if self.date_format is not None and self.date_column is None:
            raise ValueError("date_format is set but date_column is not")
        if self.column_names is not None and self.header:
            raise ValueError(
                "column_names is for files without a header; " "set has_header: false"
            )
        return self


class VocabularyConfig(Frozen):
    """How raw values of a sparse field become ids.

    With `hash_buckets` unset, a vocabulary of every value seen at least
    `min_count` times in the training window; rarer and unseen values share one
    out-of-vocabulary id. With `hash_buckets`, a stable hash modulo the bucket
    count, for fields too large to count.
    """

    min_count: Annotated[int, Field(ge=1)] = 1
    hash_buckets: Annotated[int, Field(ge=1)] | None = None


class FeatureSpec(Frozen):
    """One input column and how it is encoded."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    column: str | None = Field(default=None, description="source column; default name")
    kind: FeatureKind
    side: Side = Side.CONTEXT
    embedding_dim: Annotated[int, Field(ge=1, le=4096)] | None = None
    vocabulary: VocabularyConfig = VocabularyConfig()
    embedding_group: str | None = Field(
        default=None,
        description="features with the same group share one vocabulary and table",
    )
    transform: DenseTransform = DenseTransform.NONE
    num_buckets: Annotated[int, Field(ge=2, le=10_000)] = 32
    max_length: Annotated[int, Field(ge=1, le=10_000)] | None = None
    list_separator: str = Field(
        default="|", description="separator of a sequence stored as text"
    )

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def group(self) -> str:
        """Name of the vocabulary and embedding table this feature uses."""
        return self.embedding_group or self.name

    @property
    def is_categorical(self) -> bool:
        """True where the encoded value is an id: sparse, sequence, bucketed dense."""
        return (
            self.kind != FeatureKind.DENSE or self.transform == DenseTransform.QUANTILE
        )

    @model_validator(mode="after")
    def _kind_options(self) -> Self:
        if self.kind == FeatureKind.SEQUENCE and self.max_length is None:
            raise ValueError(f"sequence feature '{self.name}' needs max_length")
        if self.kind != FeatureKind.SEQUENCE and self.max_length is not None:
            raise ValueError(
                f"max_length applies to sequence features; '{self.name}' is "
                f"{self.kind.value}"
            )
        if self.kind != FeatureKind.DENSE and self.transform != DenseTransform.NONE:
            raise ValueError(
                f"transform applies to dense features; '{self.name}' is "
                f"{self.kind.value}"
            )
        if self.kind == FeatureKind.DENSE and self.embedding_group is not None:
            raise ValueError(f"dense feature '{self.name}' cannot share an embedding")
        return self


class CrossSpec(Frozen):
    """A crossed feature for the wide part: a tuple of sparse fields, hashed."""

    fields: Annotated[list[str], Field(min_length=2, max_length=4)]
    hash_buckets: Annotated[int, Field(ge=1)] = 100_003

    @property
    def name(self) -> str:
        return "_x_".join(self.fields)


Activation = Literal["relu", "gelu", "silu", "tanh"]
HiddenDims = Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=1)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]


class LRConfig(Frozen):
    """Logistic regression: the wide part alone (ids, dense, crosses)."""

    name: Literal["lr"] = "lr"


class FMConfig(Frozen):
    """Factorization machine (Rendle 2010): linear terms plus pairwise <v_i, v_j>."""

    name: Literal["fm"] = "fm"


class DeepTower(Frozen):
    """The MLP shared by the deep models."""

    hidden_dims: HiddenDims = [400, 400, 400]
    activation: Activation = "relu"
    dropout: Dropout = 0.0
    batch_norm: bool = False


class WideDeepConfig(DeepTower):
    """Wide & Deep (Cheng et al. 2016): a linear wide part beside an MLP."""

    name: Literal["wide_deep"] = "wide_deep"
    hidden_dims: HiddenDims = [1024, 512, 256]


class WideResNetConfig(Frozen):
    """Wide & Deep whose deep tower is a stack of residual blocks (the mission's
    model), with batch normalization after each block unless switched off."""

    name: Literal["wide_resnet"] = "wide_resnet"
    num_blocks: Annotated[int, Field(ge=1, le=64)] = 3
    width: Annotated[int, Field(ge=1, le=65536)] = 256
    batch_norm: bool = True
    activation: Activation = "relu"
    dropout: Dropout = 0.0


class PNNConfig(DeepTower):
    """Product-based network (Qu et al. 2016): field products feed an MLP.

    `product` picks the inner product (IPNN), the outer product (OPNN) or both
    (PNN*); `kernel` is the outer product's per-pair kernel, and
    `outer_sum_pooled` uses the paper's cheap sum-pooled approximation.
    """

    name: Literal["ipnn", "opnn", "pnn"] = "pnn"
    kernel: Literal["matrix", "vector", "number"] = "vector"
    outer_sum_pooled: bool = False
    outer_dim: Annotated[int, Field(ge=1, le=65536)] = 64


class DeepFMConfig(DeepTower):
    """DeepFM (Guo et al. 2017): FM and an MLP over the same embeddings."""

    name: Literal["deepfm"] = "deepfm"


class DCNv2Config(DeepTower):
    """DCN-V2 (Wang et al. 2021): cross layers x0 * (W x + b) + x and an MLP."""

    name: Literal["dcn_v2"] = "dcn_v2"
    num_cross_layers: Annotated[int, Field(ge=1, le=16)] = 3
    low_rank: Annotated[int, Field(ge=1)] | None = None
    structure: Literal["stacked", "parallel"] = "parallel"


ModelConfig = Annotated[
    LRConfig
    | FMConfig
    | WideDeepConfig
    | WideResNetConfig
    | PNNConfig
    | DeepFMConfig
    | DCNv2Config,
    Field(discriminator="name"),
]
MODEL_NAMES = (
    "lr",
    "fm",
    "wide_deep",
    "wide_resnet",
    "ipnn",
    "opnn",
    "pnn",
    "deepfm",
    "dcn_v2",
)
# Models that multiply embeddings of different fields need one width for all.
PRODUCT_MODELS = frozenset({"fm", "ipnn", "opnn", "pnn", "deepfm"})


class TrainConfig(Frozen):
    """How a model is trained; one trainer serves every model."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 4096
    eval_batch_size: Annotated[int, Field(ge=1)] = 65536
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    embedding_learning_rate: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="default: learning_rate"
    )
    embedding_optimizer: Literal["sparse_adam", "adagrad", "adam"] = Field(
        default="sparse_adam",
        description="sparse_adam and adagrad update only the rows a batch touches",
    )
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    embedding_l2: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="L2 penalty on the distinct embedding rows each batch looks "
        "up (lazy full-table L2); works with sparse optimizers, which have no "
        "weight decay",
    )
    grad_clip_norm: Annotated[float, Field(gt=0)] | None = None
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = 2
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="bf16: autocast the training forward pass (matmuls in "
        "bfloat16); weights, embeddings, optimizer state, the loss and "
        "evaluation stay float32. auto: bf16 where the device has bf16 matrix "
        "instructions, else fp32",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the model's parts that hold no embedding table",
    )
    calibrate: bool = Field(
        default=True,
        description="after training, fit a scale and a bias of the logits on "
        "the validation split (Platt scaling), saved with the model: AUC is "
        "unchanged, logloss and calibration improve; without a validation "
        "split nothing is fitted",
    )
    batch_norm_refresh: Annotated[int, Field(ge=0)] = Field(
        default=20,
        description="before each evaluation, batch norm running statistics are "
        "measured again on this many training batches with the weights as they "
        "are then (the running averages of training trail weights that moved); "
        "0: keep the running averages",
    )
    log_every: Annotated[int, Field(ge=1)] = 50
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(
        default=0, description="steps between checkpoints; 0: at each epoch's end"
    )


class ExactIndexConfig(Frozen):
    """Exact inner product over every item vector (FAISS flat index).

    No training and no lost neighbours; a query costs one pass over the
    catalogue, a few milliseconds per million items and 64 dims on one core.
    """

    kind: Literal["exact"] = "exact"


class HNSWIndexConfig(Frozen):
    """Approximate search on a navigable small-world graph (FAISS HNSW).

    `neighbors` is the graph degree (M), `ef_construction` and `ef_search` the
    candidate lists while building and searching; `ef_search` below the number
    of neighbours asked for is raised to it, since HNSW cannot return more.
    """

    kind: Literal["hnsw"] = "hnsw"
    neighbors: Annotated[int, Field(ge=4, le=256)] = 32
    ef_construction: Annotated[int, Field(ge=8, le=100_000)] = 80
    ef_search: Annotated[int, Field(ge=1, le=100_000)] = 1200


class IVFIndexConfig(Frozen):
    """Approximate search in the nearest `probe` of `lists` k-means cells
    (FAISS IVF-Flat); `lists` defaults to about 4 * sqrt(items).

    A thousand neighbours spread over many cells: on the synthetic window's
    item vectors (50k items, 224 cells) probing 32 cells found 71% of the
    exact top 1,000, 64 cells 88%, 128 cells 96%, each in about 1 ms.
    """

    kind: Literal["ivf"] = "ivf"
    lists: Annotated[int, Field(ge=1)] | None = None
    probe: Annotated[int, Field(ge=1)] = 128


IndexConfig = Annotated[
    ExactIndexConfig | HNSWIndexConfig | IVFIndexConfig, Field(discriminator="kind")
]
INDEX_KINDS = ("exact", "hnsw", "ivf")


class RecallConfig(Frozen):
    """The two-tower recall model, its training and its item index.

    The towers reuse the features' embedding tables: user-side fields and
    behaviour sequences feed the user tower, item-side fields the item tower,
    context fields neither (they are not known when candidates are recalled).
    Each tower is an MLP ending in an L2-normalised `output_dim` vector; the
    score of a pair is their inner product divided by `temperature`.
    """

    item_feature: str = Field(
        default="item_id", description="the item-side sparse feature naming an item"
    )
    output_dim: Annotated[int, Field(ge=2, le=4096)] = 64
    hidden_dims: HiddenDims = [256]
    activation: Activation = "relu"
    temperature: Annotated[float, Field(gt=0, le=10)] = 0.05
    logq_correction: bool = Field(
        default=True,
        description="subtract the log of each item's click share from in-batch "
        "logits, so popular items are not over-punished as negatives",
    )
    num_candidates: Annotated[int, Field(ge=1, le=100_000)] = 1000
    index: IndexConfig = ExactIndexConfig()
    train: TrainConfig = TrainConfig(
        batch_size=1024, epochs=5, learning_rate=2e-3, early_stopping_patience=2
    )


# The mission's comparison: Wide&Deep, Wide-ResNet with and without batch
# normalization, DeepFM, both PNNs, and DCN-v2 as today's strong baseline.
MISSION_MODELS = (
    "wide_deep",
    "wide_resnet",
    "wide_resnet_nobn",
    "deepfm",
    "ipnn",
    "opnn",
    "dcn_v2",
)
# Names `likely compare` knows without a `compare.variants` entry: every model
# with its defaults, and Wide-ResNet without batch normalization.
BUILTIN_VARIANTS = (*MODEL_NAMES, "wide_resnet_nobn")


class CompareConfig(Frozen):
    """What `likely compare` trains and how it judges the mission's claims.

    A variant is a named model config. `models` lists the variants to train;
    a name is looked up in `variants` first, then among the built-in names
    (a model name with the settings of the config's `model` section when the
    names agree, else that model's defaults; `wide_resnet_nobn` is the
    config's Wide-ResNet with batch normalization off).
    """

    models: Annotated[list[str], Field(min_length=1)] = list(MISSION_MODELS)
    variants: dict[str, ModelConfig] = {}
    seeds: Annotated[int, Field(ge=1, le=100)] = 3
    auc_margin: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.001,
        description="smallest AUC gain that counts; below it a gain is a tie",
    )
    incremental_days: Annotated[int, Field(ge=0, le=365)] = Field(
        default=0,
        description="later days on which incremental training is tested "
        "against training from scratch (needs data.date_column); 0: not tested",
    )

    @model_validator(mode="after")
    def _known_names(self) -> Self:
        for i, name in enumerate(self.models):
            if name not in self.variants and name not in BUILTIN_VARIANTS:
                raise ValueError(
                    f"models[{i}] '{name}' is neither in compare.variants nor "
                    f"built in; choose one of: {', '.join(BUILTIN_VARIANTS)}"
                )
        repeated = sorted({n for n in self.models if self.models.count(n) > 1})
        if repeated:
            raise ValueError(f"models are listed more than once: {repeated}")
        return self


ContextValue = str | int | float | bool


class ServeConfig(Frozen):
    """What the service fills in that a `/recommend` request does not say.

    Context columns (hour, platform, position, ...) describe the moment of an
    impression; a request may give them, and the rest take these values. A
    position column is best left to this default: every candidate is scored
    at the same slot, so the position bias the model learned shifts all of
    them alike instead of favouring whichever slot a candidate was guessed at.
    """

    context_defaults: dict[str, ContextValue] = Field(
        default={},
        description="raw value of each context column that a request does not give",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="fp32",
        description="the ranking model's forward pass when serving: bf16 "
        "autocast was 1.6x faster on a CPU with bf16 instructions, logits "
        "within about 0.04; auto takes bf16 where it is fast",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="where the ranking model scores candidates: auto is CUDA "
        "when present; recall and the feature store stay on the CPU",
    )


class ExperimentConfig(Frozen):
    """Everything a run needs: logs to batches, the model, and its training."""

    data: DataConfig
    features: Annotated[list[FeatureSpec], Field(min_length=1)]
    crosses: list[CrossSpec] = []
    embedding_dim: Annotated[int, Field(ge=1, le=4096)] = 16
    model: ModelConfig = WideResNetConfig()
    train: TrainConfig = TrainConfig()
    recall: RecallConfig = RecallConfig()
    compare: CompareConfig = CompareConfig()
    serve: ServeConfig = ServeConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique; repeated: {duplicates}")
        reserved = {
            self.data.label,
            self.data.date_column,
            self.data.probability_column,
        }
        clash = sorted({f.source for f in self.features} & (reserved - {None}))
        if clash:
            raise ValueError(
                f"columns {clash} are the label, date or probability column and "
                "cannot also be features"
            )
        self._check_groups()
        self._check_crosses()
        self._check_product_dims()
        self._check_context_defaults()
        # Only a recall section of the config's own is checked, so that a
        # ranking config (or its dump, which holds the defaults) needs no item
        # feature; the recall commands check before they start.
        if "recall" in self.model_fields_set and self.recall != RecallConfig():
            self.check_recall()
        return self

    def check_recall(self) -> None:
        """Raise unless the features can feed the two towers of `recall`.

        Checked at load where the config sets a `recall` section of its
        own, and by the recall commands before they start.
        """
        name = self.recall.item_feature
        item = next((f for f in self.features if f.name == name), None)
        if item is None or item.kind != FeatureKind.SPARSE or item.side != Side.ITEM:
            choices = [
                f.name
                for f in self.sparse_features
                if f.side == Side.ITEM and f.kind == FeatureKind.SPARSE
            ]
            got = "no such feature" if item is None else f"{item.kind}, {item.side}"
            raise ValueError(
                f"recall.item_feature '{name}' must be a sparse item-side feature "
                f"({got}); choose one of: {choices or 'none in this config'}"
            )
        if not any(f.side == Side.USER for f in self.features):
            raise ValueError(
                "recall needs at least one feature with side: user for the user "
                "tower; every feature is item or context side"
            )

    def _check_context_defaults(self) -> None:
        context = {f.source for f in self.features if f.side == Side.CONTEXT}
        for column in self.serve.context_defaults:
            if column not in context:
                raise ValueError(
                    f"serve.context_defaults names '{column}', which is not the "
                    f"column of a context-side feature; choose from: "
                    f"{sorted(context) or 'none in this config'}"
                )

    def _check_product_dims(self) -> None:
        if self.model.name not in PRODUCT_MODELS:
            return
        dims = {f.name: self.dim_of(f) for f in self.categorical_features}
        if len(set(dims.values())) > 1:
            shown = ", ".join(f"{n} {d}" for n, d in dims.items())
            raise ValueError(
                f"model '{self.model.name}' multiplies the embeddings of every pair "
                f"of fields, so all need the same embedding_dim; got {shown}"
            )

    def _check_groups(self) -> None:
        by_group: dict[str, list[FeatureSpec]] = {}
        for feature in self.categorical_features:
            by_group.setdefault(feature.group, []).append(feature)
        for group, members in by_group.items():
            if len(members) == 1:
                continue
            kinds = {m.kind for m in members}
            if FeatureKind.DENSE in kinds:
                raise ValueError(f"embedding group '{group}' mixes dense and ids")
            policies = {m.vocabulary for m in members}
            if len(policies) > 1:
                raise ValueError(
                    f"features {[m.name for m in members]} share embedding group "
                    f"'{group}' but have different vocabulary settings"
                )
            dims = {self.dim_of(m) for m in members}
            if len(dims) > 1:
                raise ValueError(
                    f"features {[m.name for m in members]} share embedding group "
                    f"'{group}' but have different embedding_dim {sorted(dims)}"
                )

    def _check_crosses(self) -> None:
        sparse = {f.name for f in self.sparse_features}
        for cross in self.crosses:
            unknown = [name for name in cross.fields if name not in sparse]
            if unknown:
                raise ValueError(
                    f"cross {cross.fields} names {unknown}, which are not sparse "
                    f"features; choose from: {sorted(sparse)}"
                )

    def dim_of(self, feature: FeatureSpec) -> int:
        """Embedding width of a feature: its own, else the config default."""
        return feature.embedding_dim or self.embedding_dim

    @property
    def sparse_features(self) -> list[FeatureSpec]:
        """Single-id fields in column order: sparse, then quantile-bucketed dense."""
        plain = [f for f in self.features if f.kind == FeatureKind.SPARSE]
        bucketed = [
            f
            for f in self.features
            if f.kind == FeatureKind.DENSE and f.transform == DenseTransform.QUANTILE
        ]
        return plain + bucketed

    @property
    def dense_features(self) -> list[FeatureSpec]:
        """Real-valued fields that stay real (every dense but quantile-bucketed)."""
        return [
            f
            for f in self.features
            if f.kind == FeatureKind.DENSE and f.transform != DenseTransform.QUANTILE
        ]

    @property
    def sequence_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == FeatureKind.SEQUENCE]

    @property
    def categorical_features(self) -> list[FeatureSpec]:
        """Every feature that is encoded to ids: sparse, bucketed dense, sequence."""
        return self.sparse_features + self.sequence_features

    def fingerprint(self) -> str:
        """Short stable digest of what affects encoding: the data section (but
        not where the cache lies), the features and the crosses. The model and
        training settings are left out, so every model shares one prepared
        window."""
        payload = self.model_dump(mode="json", include={"data", "features", "crosses"})
        payload["data"].pop("cache_dir", None)
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config from YAML.

    Relative log paths are taken relative to the config file's folder, so a
    config works from any working directory; `cache_dir` stays relative to the
    working directory, where the run's outputs go.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation; the
            message lists each bad field by its path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(raw)}")
    return parse_config(raw, base_dir=path.parent, origin=str(path))


def parse_config(
    raw: dict[str, Any], base_dir: Path = Path("."), origin: str = "config"
) -> ExperimentConfig:
    """Validate a config given as a dict; see `load_config`."""
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{origin} is invalid:\n{_format_errors(error)}") from None
    data = config.data
    updates: dict[str, Path] = {}
    for key in ("path", "test_path"):
        value = getattr(data, key)
        if value is not None and not value.is_absolute():
            updates[key] = (base_dir / value).resolve()
    return config.model_copy(update={"data": data.model_copy(update=updates)})
