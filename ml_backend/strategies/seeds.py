"""The best-scoring clear seed, again and again while chosen regions block seeds: the walk that DECOMP's
most-confident placement and the greedy baselines (entropy top-K, random keys) share.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TILE_PIXELS = 4096
# Pixels per np.maximum.at call when bounding per group: an index array of 512 KiB stays in cache
# (about 1.4x faster than slabs of 1 Mi pixels at 2048^2).
_SLAB_PIXELS = 65536


class BestClearSeeds:
    """Serves the highest-scoring clear seed of a group (ties: the lowest flat index), call after call,
    while the caller blocks seeds in ``clear`` between calls.

    ``scores`` (any real dtype) and ``clear`` (boolean, C-contiguous) share one spatial shape, 2-D, 3-D or
    any other. ``clear`` is read live, never copied: the caller updates it in place
    (``RegionShape.block``) and seeds may only stop being clear. ``groups`` (optional, integers in
    0 .. ``num_groups`` - 1, same shape) splits the seeds, for example by predicted class; without it every
    seed is in group 0. A seed scored -inf is never served.

    The flattened image is cut into tiles of ``tile_pixels`` consecutive pixels, and each (group, tile)
    keeps an upper bound on the score of its best clear seed together with the seed that gave it. The
    first tile with the highest bound is asked: while its seed is still clear the bound is exact and that
    seed is the answer (every earlier tile's bound is strictly lower, which is what sends ties to the
    lowest flat index); otherwise the tile is rescanned, its bound lowered, and the question asked again.
    Building costs one pass over the image for all groups together; a call then costs in proportion to
    the tiles whose best seed the chosen regions blocked, even when the best seeds crowd into the blob
    that one region covers. Square (cubic) tiles would be blocked fewer at a time, but consecutive pixels
    make the first pass cache-friendly (about 2x faster on 256^3) and the tie rule free of extra work.
    """

    def __init__(
        self,
        scores: np.ndarray,
        clear: np.ndarray,
        groups: np.ndarray | None = None,
        num_groups: int = 1,
        tile_pixels: int = DEFAULT_TILE_PIXELS,
    ) -> None:
        if clear.dtype != bool or not clear.flags.c_contiguous:
            raise ValueError(
                f"clear must be a C-contiguous boolean mask (it is read live through a flat view), got "
                f"dtype {clear.dtype}, C-contiguous {clear.flags.c_contiguous}"
            )
        if scores.shape != clear.shape or (groups is not None and groups.shape != clear.shape):
            raise ValueError(
                f"scores {scores.shape}, clear {clear.shape} and groups "
                f"{None if groups is None else groups.shape} must share one spatial shape"
            )
        if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
            raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
        if num_groups < 1 or (groups is None and num_groups != 1):
            raise ValueError(f"num_groups must be 1 without groups, at least 1 with them; got {num_groups}")
        if tile_pixels < 1:
            raise ValueError(f"tile_pixels must be at least 1, got {tile_pixels}")
        self._spatial_shape = clear.shape
        self._num_groups = num_groups
        self._clear = clear.reshape(-1)
        self._scores = np.ascontiguousarray(scores).reshape(-1)
        self._groups = None if groups is None else np.ascontiguousarray(groups).reshape(-1)
        self._tile = tile_pixels
        self._tiles = max(1, -(-self._clear.size // tile_pixels))
        # Float16 and float32 scores are bounded in float32, others in float64: exact either way.
        self._dtype = np.result_type(self._scores.dtype, np.float32)
        if self._groups is None:
            self._bounds, self._seeds = self._single_group_bounds()
        else:
            self._check_groups(num_groups)
            self._bounds = self._group_bounds(num_groups)
            # Each tile's best seed is found on its first visit.
            self._seeds = np.full(self._bounds.shape, -1, dtype=np.intp)
        if np.isnan(self._bounds).any():
            raise ValueError("scores contain NaN on clear seeds: every seed needs a comparable score")

    def _check_groups(self, num_groups: int) -> None:
        if not np.issubdtype(self._groups.dtype, np.integer):
            raise ValueError(f"groups must be integers, got dtype {self._groups.dtype}")
        if self._groups.size and not 0 <= int(self._groups.min()) <= int(self._groups.max()) < num_groups:
            raise ValueError(
                f"groups range over {int(self._groups.min())} .. {int(self._groups.max())}, outside the "
                f"{num_groups} groups expected (0 .. {num_groups - 1})"
            )

    def _single_group_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Every tile's best clear seed and its score, exact, in one vectorised pass."""
        masked = np.full(self._tiles * self._tile, -np.inf, dtype=self._dtype)
        np.copyto(masked[: self._clear.size], self._scores, where=self._clear)
        per_tile = masked.reshape(self._tiles, self._tile)
        best = per_tile.argmax(axis=1)
        bounds = np.take_along_axis(per_tile, best[:, None], axis=1)[:, 0]
        seeds = np.where(bounds > -np.inf, np.arange(self._tiles) * self._tile + best, -1)
        return bounds[None, :], seeds[None, :]

    def _group_bounds(self, num_groups: int) -> np.ndarray:
        """Per (group, tile): the best score among the tile's clear seeds of the group, -inf if none.

        One scatter-max over the pixels, slab by slab so that the index array stays small.
        """
        bounds = np.full(num_groups * self._tiles + 1, -np.inf, dtype=self._dtype)
        unclear_bin = num_groups * self._tiles
        slab = self._tile * max(1, _SLAB_PIXELS // self._tile)
        tile_in_slab = np.arange(min(slab, self._clear.size)) // self._tile
        for start in range(0, self._clear.size, slab):
            span = slice(start, start + slab)
            keys = self._groups[span].astype(np.intp) * self._tiles
            keys += tile_in_slab[: keys.size] + start // self._tile
            keys[~self._clear[span]] = unclear_bin
            # Scores in the bounds' dtype: ufunc.at takes a slow path (10x or more) when it must cast.
            np.maximum.at(bounds, keys, self._scores[span].astype(self._dtype, copy=False))
        return bounds[:unclear_bin].reshape(num_groups, self._tiles)

    def _rescan(self, group: int, tile: int) -> None:
        span = slice(tile * self._tile, (tile + 1) * self._tile)
        candidates = self._clear[span]
        if self._groups is not None:
            candidates = candidates & (self._groups[span] == group)
        masked = np.where(candidates, self._scores[span], -np.inf)
        best = int(masked.argmax())
        self._bounds[group, tile] = masked[best]
        self._seeds[group, tile] = span.start + best if masked[best] > -np.inf else -1

    def next_clear(self, group: int = 0) -> tuple[int, ...] | None:
        """The best clear seed of ``group`` as a tuple of ints, or None when the group has none left."""
        if not 0 <= group < self._num_groups:
            raise ValueError(f"group {group} is outside 0 .. {self._num_groups - 1}")
        bounds = self._bounds[group]
        while True:
            tile = int(bounds.argmax())
            if bounds[tile] == -np.inf:
                return None
            seed = int(self._seeds[group, tile])
            if seed >= 0 and self._clear[seed]:
                return tuple(int(i) for i in np.unravel_index(seed, self._spatial_shape))
            self._rescan(group, tile)
