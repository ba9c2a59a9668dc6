"""Model inputs: the feature layout, the shared embedding layer and the wide part.

Shapes follow `likely.models.layers`: `B` batch, `F` fields, `D` embedding dim;
`F_s` sparse fields and `S` sequences (each pooled into one field, so the
embedding layer outputs `F = F_s + S` fields), `L` sequence length, `C` crosses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from likely.config import ExperimentConfig, FeatureKind


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: its rows (ids, reserved ones included) and width."""

    name: str
    num_embeddings: int
    embedding_dim: int


@dataclass(frozen=True)
class FeatureLayout:
    """What a model is built for: tables, fields, dense width and crosses.

    Built from the config and the fitted vocabulary sizes, so a model and its
    encoders always agree on every table's size.
    """

    tables: tuple[TableSpec, ...]
    sparse_tables: tuple[str, ...]  # table of each column of `sparse (B, F_s)`
    sequence_tables: tuple[str, ...]  # table of each sequence of `(B, S, L)`
    num_dense: int
    cross_sizes: tuple[int, ...]

    @classmethod
    def from_config(
        cls,
        config: ExperimentConfig,
        vocab_sizes: dict[str, int],
        cross_sizes: list[int] | tuple[int, ...] = (),
    ) -> FeatureLayout:
        """The layout of a prepared window (`manifest["vocab_sizes"]` and
        `manifest["cross_sizes"]`)."""
        tables: dict[str, TableSpec] = {}
        for feature in config.categorical_features:
            if feature.group not in vocab_sizes:
                raise ValueError(
                    f"no vocabulary size for table '{feature.group}'; the prepared "
                    f"data has {sorted(vocab_sizes)}"
                )
            tables[feature.group] = TableSpec(
                feature.group, int(vocab_sizes[feature.group]), config.dim_of(feature)
            )
        crosses = tuple(int(size) for size in cross_sizes)
        if len(crosses) != len(config.crosses):
            raise ValueError(
                f"{len(config.crosses)} crosses in the config but sizes for "
                f"{len(crosses)}"
            )
        return cls(
            tables=tuple(tables.values()),
            sparse_tables=tuple(f.group for f in config.sparse_features),
            sequence_tables=tuple(
                f.group for f in config.features if f.kind == FeatureKind.SEQUENCE
            ),
            num_dense=len(config.dense_features),
            cross_sizes=crosses,
        )

    @property
    def num_fields(self) -> int:
        """Fields after pooling: sparse columns plus one per sequence."""
        return len(self.sparse_tables) + len(self.sequence_tables)

    def table(self, name: str) -> TableSpec:
        return next(t for t in self.tables if t.name == name)

    @property
    def field_dims(self) -> tuple[int, ...]:
        """Embedding width of each field, sparse columns first."""
        names = self.sparse_tables + self.sequence_tables
        return tuple(self.table(name).embedding_dim for name in names)

    @property
    def equal_dims(self) -> int | None:
        """The one width every field shares, or None when widths differ."""
        dims = set(self.field_dims)
        return dims.pop() if len(dims) == 1 else None

    @property
    def flat_dim(self) -> int:
        """Width of all field embeddings concatenated."""
        return sum(self.field_dims)


def _offsets(sizes: list[int]) -> torch.Tensor:
    """Start row of each table inside one concatenated table."""
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return torch.tensor(starts, dtype=torch.long)


class _TableGroup(nn.Module):
    """Tables of one width stored as one `nn.Embedding`, and the fields using it.

    Each table starts at its own row of the shared weight; a field's ids are
    shifted by its table's start, so one lookup serves every field of the group.
    """

    def __init__(
        self,
        tables: list[TableSpec],
        sparse_fields: list[tuple[int, str]],
        sequence_fields: list[tuple[int, str]],
        *,
        sparse: bool,
    ):
        super().__init__()
        width = tables[0].embedding_dim
        starts = dict(
            zip(
                [t.name for t in tables],
                _offsets([t.num_embeddings for t in tables]).tolist(),
                strict=True,
            )
        )
        self.embedding = nn.Embedding(
            sum(t.num_embeddings for t in tables), width, sparse=sparse
        )
        nn.init.normal_(self.embedding.weight, std=0.01)
        # (first row, rows) of each table inside the shared weight.
        self.table_rows = {t.name: (starts[t.name], t.num_embeddings) for t in tables}
        self.has_sequences = bool(sequence_fields)

        def index(fields: list[tuple[int, str]]) -> tuple[torch.Tensor, torch.Tensor]:
            positions = torch.tensor([p for p, _ in fields], dtype=torch.long)
            table_starts = torch.tensor(
                [starts[t] for _, t in fields], dtype=torch.long
            )
            return positions, table_starts

        sparse_index, sparse_start = index(sparse_fields)
        sequence_index, sequence_start = index(sequence_fields)
        self.register_buffer("sparse_index", sparse_index, persistent=False)
        self.register_buffer("sparse_start", sparse_start, persistent=False)
        self.register_buffer("sequence_index", sequence_index, persistent=False)
        self.register_buffer(
            "sequence_start", sequence_start.view(1, -1, 1), persistent=False
        )

    def forward(self, sparse: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """`(B, F_g, D)`: the group's sparse fields, then its pooled sequences."""
        ids = sparse.index_select(1, self.sparse_index) + self.sparse_start  # (B, F_s)
        vectors = self.embedding(ids)  # (B, F_s, D)
        if not self.has_sequences:
            return vectors
        items = sequence.index_select(1, self.sequence_index)  # (B, S, L)
        present = (items > 0).unsqueeze(-1).to(vectors.dtype)  # (B, S, L, 1)
        pooled = self.embedding(items + self.sequence_start) * present  # (B, S, L, D)
        count = present.sum(dim=2).clamp(min=1.0)  # (B, S, 1)
        return torch.cat([vectors, pooled.sum(dim=2) / count], dim=1)  # (B, F_g, D)


class FeatureEmbedding(nn.Module):
    """Every sparse field and pooled sequence as embedding vectors.

    Tables of the same width are stored together (see `_TableGroup`), so all
    fields of a width are looked up in one call; fields that share a table (a
    click sequence and `item_id`) index the same rows. Sequences are mean-pooled
    over their non-padding items (id 0 is padding). With `sparse=True` the
    gradient is a sparse tensor touching only the batch's rows, for SparseAdam.

    Args:
        layout: the feature layout.
        sparse: produce sparse gradients.
    """

    def __init__(self, layout: FeatureLayout, *, sparse: bool = False):
        super().__init__()
        self.layout = layout
        self.equal_dims = layout.equal_dims is not None
        num_sparse = len(layout.sparse_tables)
        sparse_fields = list(enumerate(layout.sparse_tables))
        sequence_fields = list(enumerate(layout.sequence_tables))
        self.groups = nn.ModuleList()
        emitted: list[int] = []  # field positions in the order groups emit them
        for width in sorted({t.embedding_dim for t in layout.tables}):
            tables = [t for t in layout.tables if t.embedding_dim == width]
            names = {t.name for t in tables}
            mine = [(p, t) for p, t in sparse_fields if t in names]
            mine_sequences = [(p, t) for p, t in sequence_fields if t in names]
            self.groups.append(_TableGroup(tables, mine, mine_sequences, sparse=sparse))
            emitted += [p for p, _ in mine] + [
                num_sparse + p for p, _ in mine_sequences
            ]
        order = torch.argsort(torch.tensor(emitted, dtype=torch.long))
        self.register_buffer("field_order", order, persistent=False)

    def forward(self, sparse: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """`(B, F, D)` field embeddings in field order (sparse, then sequences).

        Needs one width for every field; `flat` takes mixed widths.
        """
        if not self.equal_dims:
            raise ValueError(
                "fields have different embedding widths "
                f"{sorted(set(self.layout.field_dims))}; use flat() instead"
            )
        parts = [group(sparse, sequence) for group in self.groups]
        return torch.cat(parts, dim=1).index_select(1, self.field_order)  # (B, F, D)

    def flat(self, sparse: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """`(B, sum of widths)`: every field's embedding, concatenated."""
        parts = [group(sparse, sequence).flatten(1) for group in self.groups]
        return torch.cat(parts, dim=1)


class WideLinear(nn.Module):
    """The wide (linear) part: a weight per id, per cross id, and per dense value.

    Returns `(B,)` logits: bias + sum of the weights of the batch's ids (sparse
    fields and mean-pooled sequences), crossed ids, and a linear map of the
    dense features.
    """

    def __init__(self, layout: FeatureLayout, *, sparse: bool = False):
        super().__init__()
        narrow = FeatureLayout(
            tables=tuple(TableSpec(t.name, t.num_embeddings, 1) for t in layout.tables),
            sparse_tables=layout.sparse_tables,
            sequence_tables=layout.sequence_tables,
            num_dense=layout.num_dense,
            cross_sizes=layout.cross_sizes,
        )
        self.ids = FeatureEmbedding(narrow, sparse=sparse)
        for group in self.ids.groups:
            nn.init.zeros_(group.embedding.weight)
        self.bias = nn.Parameter(torch.zeros(1))
        # Parts with nothing to weigh are left out, so every parameter learns.
        sizes = list(layout.cross_sizes)
        self.crosses = nn.Embedding(sum(sizes), 1, sparse=sparse) if sizes else None
        if self.crosses is not None:
            nn.init.zeros_(self.crosses.weight)
        self.register_buffer("cross_start", _offsets(sizes or [1]), persistent=False)
        self.dense = (
            nn.Linear(layout.num_dense, 1, bias=False) if layout.num_dense else None
        )
        if self.dense is not None:
            nn.init.zeros_(self.dense.weight)

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> torch.Tensor:
        logits = self.ids.flat(sparse, sequence).sum(dim=1) + self.bias  # (B,)
        if self.crosses is not None:
            logits = logits + self.crosses(cross + self.cross_start).sum(dim=(1, 2))
        if self.dense is not None:
            logits = logits + self.dense(dense).squeeze(-1)
        return logits


@torch.no_grad()
def grow_into(new: nn.Module, old: nn.Module) -> dict[str, int]:
    """Copy a trained model into one built for grown vocabularies.

    Every parameter and buffer is copied by name. Embedding tables may have
    grown: each table's old rows are copied to the same ids in the new table
    (ids never move when encoders are extended), and the rows of new ids keep
    their fresh initialisation. Returns the number of new rows per table.

    Raises:
        ValueError: a table shrank, or a non-embedding tensor changed shape.
    """
    old_groups = {n: m for n, m in old.named_modules() if isinstance(m, _TableGroup)}
    grown: dict[str, int] = {}
    skip: set[str] = set()
    for name, group in new.named_modules():
        if not isinstance(group, _TableGroup):
            continue
        before = old_groups.get(name)
        if before is None:
            raise ValueError(f"the trained model has no embedding group '{name}'")
        for table, (start, rows) in group.table_rows.items():
            old_start, old_rows = before.table_rows[table]
            if rows < old_rows:
                raise ValueError(
                    f"table '{table}' shrank from {old_rows} to {rows} rows; "
                    "extend the encoders instead of refitting them"
                )
            source = before.embedding.weight[old_start : old_start + old_rows]
            group.embedding.weight[start : start + old_rows] = source
            grown[table] = max(grown.get(table, 0), rows - old_rows)
        skip.add(f"{name}.embedding.weight" if name else "embedding.weight")
    old_state = old.state_dict()
    for key, value in new.state_dict().items():
        if key in skip:
            continue
        if key not in old_state:
            raise ValueError(f"the trained model has no '{key}'")
        if old_state[key].shape != value.shape:
            raise ValueError(
                f"'{key}' has shape {tuple(old_state[key].shape)} in the trained "
                f"model but {tuple(value.shape)} in the new one"
            )
        value.copy_(old_state[key])
    return grown
