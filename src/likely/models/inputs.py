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


class _CoalescedLookup(torch.autograd.Function):
    """Rows of `weight` at `ids`, with a sparse gradient that is already coalesced.

    `nn.Embedding(sparse=True)` returns one gradient row per looked-up id (B * F
    of them, most repeated), and SparseAdam then coalesces it: a sort and a
    reduction of every row, which took about as long as the rest of the
    embedding work together. Here the backward sums the rows of each distinct
    id with one `index_add_` (the ids were made unique in the forward) and
    returns them flagged as coalesced, so the optimizer's coalesce is free.

    The unique is a sort of the B * F ids, which on a CPU runs on one thread
    (about 1 ms of a 100 ms step at batch 4096 and 26 fields); a GPU sorts in
    parallel, for a cost lost in the noise.
    """

    # The last ids made unique, with their rows and inverse: DeepFM's wide part
    # and its embedding look up the same ids in two tables, so the second
    # lookup reuses the first one's sort after a cheap comparison.
    _last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows, inverse = _CoalescedLookup._unique(ids)
        ctx.save_for_backward(rows, inverse)
        ctx.weight_shape = weight.shape
        return nn.functional.embedding(ids, weight)  # (*ids.shape, D)

    @staticmethod
    def _unique(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted distinct ids `(U,)` and where each id is among them."""
        last = _CoalescedLookup._last
        if (
            last is not None
            and last[0].shape == ids.shape
            and last[0].device == ids.device
            and torch.equal(last[0], ids)
        ):
            return last[1], last[2]
        # 32-bit keys sort in about two thirds of the time of 64-bit ones.
        narrow = ids.numel() and int(ids.max()) < 2**31
        keys = ids.int() if narrow else ids
        rows, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        rows = rows.long()
        _CoalescedLookup._last = (ids.clone(), rows, inverse)
        return rows, inverse

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        rows, inverse = ctx.saved_tensors
        width = ctx.weight_shape[1]
        values = grad.new_zeros(rows.numel(), width).index_add_(
            0, inverse.reshape(-1), grad.reshape(-1, width)
        )  # (U, D), one row per distinct id
        gradient = torch.sparse_coo_tensor(
            rows.unsqueeze(0),
            values,
            ctx.weight_shape,
            is_coalesced=True,
            check_invariants=False,  # rows are sorted and unique by construction
        )
        return gradient, None


class CoalescedEmbedding(nn.Embedding):
    """`nn.Embedding` whose sparse gradient comes coalesced (`_CoalescedLookup`).

    The same module otherwise: same weight, state-dict names and hooks; with
    `sparse=False`, in eval mode (serving, export) or without grad, it is a
    plain lookup.
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        training = self.training and torch.is_grad_enabled()
        if self.sparse and training and self.weight.requires_grad:
            return _CoalescedLookup.apply(self.weight, ids)
        return super().forward(ids)


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
        self.embedding = CoalescedEmbedding(
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
        # Selecting every sparse column in order is a copy that changes nothing.
        self.all_sparse_in_order = bool(
            torch.equal(sparse_index, torch.arange(len(sparse_fields)))
        )
        self.register_buffer("sparse_index", sparse_index, persistent=False)
        self.register_buffer("sparse_start", sparse_start, persistent=False)
        self.register_buffer("sequence_index", sequence_index, persistent=False)
        self.register_buffer(
            "sequence_start", sequence_start.view(1, -1, 1), persistent=False
        )

    def forward(self, sparse: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """`(B, F_g, D)`: the group's sparse fields, then its pooled sequences."""
        if not (self.all_sparse_in_order and sparse.size(1) == len(self.sparse_index)):
            sparse = sparse.index_select(1, self.sparse_index)
        ids = sparse + self.sparse_start  # (B, F_s)
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
        # With one width and no sequences the groups emit fields in order; the
        # reordering gather and its backward would cost a copy of (B, F, D) each.
        self.in_order = bool(torch.equal(order, torch.arange(len(order))))

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
        fields = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.in_order:
            return fields  # (B, F, D)
        return fields.index_select(1, self.field_order)  # (B, F, D)

    def flat(self, sparse: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """`(B, sum of widths)`: every field's embedding, concatenated."""
        parts = [group(sparse, sequence).flatten(1) for group in self.groups]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def flat_blocks(self) -> list[tuple[int, int]]:
        """`(field, width)` of each block of `flat`'s output, in output order.

        Fields are numbered as in `forward`: sparse columns, then sequences.
        Groups emit fields by width, so `flat` is not in field order; this
        says which columns of it belong to which field.
        """
        num_sparse = len(self.layout.sparse_tables)
        blocks = []
        for group in self.groups:
            width = group.embedding.embedding_dim
            blocks += [(int(p), width) for p in group.sparse_index.tolist()]
            blocks += [
                (num_sparse + int(p), width) for p in group.sequence_index.tolist()
            ]
        return blocks


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
        self.crosses = (
            CoalescedEmbedding(sum(sizes), 1, sparse=sparse) if sizes else None
        )
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


@dataclass(frozen=True)
class RowMap:
    """Where a trained model's embedding rows lie in one built for grown
    vocabularies: for each grouped embedding weight (by state-dict name), the
    rows in the new weight and the rows of the same ids in the old one."""

    rows: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name: (new (R,), old (R,))
    new_ids: dict[str, int]  # table: how many ids the new model adds

    @classmethod
    def between(cls, new: nn.Module, old: nn.Module) -> RowMap:
        """Raises ValueError: a table shrank, or `old` lacks a group of `new`."""
        old_groups = {
            n: m for n, m in old.named_modules() if isinstance(m, _TableGroup)
        }
        rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        new_ids: dict[str, int] = {}
        for name, group in new.named_modules():
            if not isinstance(group, _TableGroup):
                continue
            before = old_groups.get(name)
            if before is None:
                raise ValueError(f"the trained model has no embedding group '{name}'")
            new_rows, old_rows = [], []
            for table, (start, count) in group.table_rows.items():
                old_start, old_count = before.table_rows[table]
                if count < old_count:
                    raise ValueError(
                        f"table '{table}' shrank from {old_count} to {count} rows; "
                        "extend the encoders instead of refitting them"
                    )
                new_rows.append(torch.arange(start, start + old_count))
                old_rows.append(torch.arange(old_start, old_start + old_count))
                new_ids[table] = max(new_ids.get(table, 0), count - old_count)
            key = f"{name}.embedding.weight" if name else "embedding.weight"
            rows[key] = (torch.cat(new_rows), torch.cat(old_rows))
        return cls(rows, new_ids)

    def place(self, key: str, old: torch.Tensor, new: torch.Tensor) -> None:
        """Copy `old`, a tensor of the old model's weight `key` or shaped like
        it, into `new`: row by row where `key` is a grouped embedding weight
        (other rows of `new` are left as they are), else whole.

        Raises ValueError: the shapes do not fit.
        """
        if key in self.rows:
            new_rows, old_rows = self.rows[key]
            new[new_rows.to(new.device)] = old[old_rows.to(old.device)].to(new.device)
            return
        if old.shape != new.shape:
            raise ValueError(
                f"'{key}' has shape {tuple(old.shape)} in the trained "
                f"model but {tuple(new.shape)} in the new one"
            )
        new.copy_(old)


@torch.no_grad()
def grow_into(new: nn.Module, old: nn.Module) -> RowMap:
    """Copy a trained model into one built for grown vocabularies.

    Every parameter and buffer is copied by name. Embedding tables may have
    grown: each table's old rows are copied to the same ids in the new table
    (ids never move when encoders are extended), and the rows of new ids keep
    their fresh initialisation. Returns the map of old rows to new ones (its
    `new_ids`: the number of new rows per table).

    Raises:
        ValueError: a table shrank, or a non-embedding tensor changed shape.
    """
    row_map = RowMap.between(new, old)
    old_state = old.state_dict()
    for key, value in new.state_dict().items():
        if key not in old_state:
            raise ValueError(f"the trained model has no '{key}'")
        row_map.place(key, old_state[key], value)
    return row_map
