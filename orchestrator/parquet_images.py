"""Image/label rows streamed from Parquet shards (``ParquetImages``).

A column of encoded image bytes, or of ``{bytes, path}`` structs, plus an integer label: the
layout of the common Parquet exports of ImageNet. Streamed row group by row group with a
shuffle buffer, because random access into large shards reads a whole row group per image.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from orchestrator.image_decode import DEFAULT_BACKGROUND, decode


class ParquetImages(IterableDataset):
    """Image/label rows streamed from Parquet shards, split over DataLoader workers and ranks.

    The unit of work is a (file, row group): units are shuffled per epoch (training), dealt out
    round-robin to ``rank × worker``, and rows pass through a shuffle buffer. With
    ``equal_split`` every rank yields exactly ``rows // world`` samples (cycling its units if
    short), because data-parallel ranks that run out of batches at different times deadlock.
    """

    def __init__(
        self,
        files: list[Path],
        image_column: str,
        label_column: str,
        transform,
        *,
        shuffle: bool,
        seed: int = 0,
        buffer: int = 10_000,
        equal_split: bool = True,
        background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    ) -> None:
        self.files = [str(f) for f in files]
        self.background = tuple(background)
        self.image_column, self.label_column = image_column, label_column
        self.transform = transform
        self.shuffle, self.seed, self.buffer, self.equal_split = shuffle, seed, buffer, equal_split
        self.units: list[tuple[int, int, int]] = []  # (file index, row group, rows)
        for i, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            names = set(meta.schema.to_arrow_schema().names)
            for column in (image_column, label_column):
                if column not in names:
                    raise ValueError(f"{f}: no column {column!r} (columns: {sorted(names)})")
            self.units += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self.rows = sum(u[2] for u in self.units)

    def _world(self) -> tuple[int, int]:
        dist = torch.distributed
        if self.equal_split and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self.rows // self._world()[1]

    def _read(self, unit: tuple[int, int, int]) -> list[tuple[object, int]]:
        table = pq.ParquetFile(self.files[unit[0]]).read_row_group(
            unit[1], columns=[self.image_column, self.label_column]
        )
        return list(
            zip(
                table.column(self.image_column).to_pylist(),
                table.column(self.label_column).to_pylist(),
                strict=True,
            )
        )

    def _rows(self, units: list[tuple[int, int, int]], rng: random.Random):
        buffer: list[tuple[object, int]] = []
        for unit in units:
            rows = self._read(unit)
            if not self.shuffle:
                yield from rows
                continue
            buffer += rows
            while len(buffer) > self.buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        rank, world = self._world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # One epoch seed shared by the workers of a rank (torch draws a fresh base seed per
        # epoch, and prune_core seeds torch per epoch, so ranks agree and a resumed run repeats).
        epoch_seed = (info.seed - info.id) if info else int(torch.randint(0, 2**31 - 1, (1,)))
        units = list(self.units)
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch_seed}").shuffle(units)
        slot, slots = rank * workers + worker, world * workers
        rng = random.Random(f"{self.seed}/{epoch_seed}/{slot}")
        mine = units[slot::slots]
        if not self.equal_split:  # every row exactly once over all workers
            yield from (self._sample(row) for row in self._rows(mine, rng))
            return
        quota = len(self) // workers + (1 if worker < len(self) % workers else 0)
        mine = mine or units  # more workers than row groups: repeat rather than starve
        count = 0
        while count < quota:
            for row in self._rows(mine, rng):
                yield self._sample(row)
                count += 1
                if count == quota:
                    return

    def _sample(self, item: tuple[object, int]) -> tuple[Tensor, int]:
        image, label = item
        return self.transform(decode(image, self.background)), int(label)


# ----------------------------------------------------------------------------- imagefolder
