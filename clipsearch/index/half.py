"""Read-only float16 vectors with exact float32 answers, for the query service's embedded index.

A query reads every stored vector, so holding them as float16 halves both the memory a function
needs and the bytes a search reads. Results stay those of float32: the float16 copy (a FAISS fp16
scalar-quantizer index) only proposes candidates; their float32 rows are read back from the
generation's `vectors.npy` (with pread, not a memory map, so rows never read cost no memory) and
scored exactly, and the candidate list grows until a bound proves nothing outside it can reach
the top k.

The bound: for unit vectors q and v, |q.v16 - q.v| <= sum |q_i| |v_i - v16_i| <= 2^-11 sum |q_i v_i|
<= 2^-11 (float16's rounding; subnormals add at most 2^-25 per term), plus float32 summation error
in both scores (under 1e-4 for 4096 dimensions). A row outside the candidates has an approximate
score at most the lowest candidate's, so its exact score is below that plus EPS; when that is
below the k-th exact score among the candidates, the candidates hold the exact top k.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from clipsearch.index.faiss_files import check_unit_rows

EPS = 2.0**-11 + 1e-4
CHUNK_ROWS = 1024


class HalfVectors:
    """The rows of a float32 `vectors.npy` as float16 in memory; see the module docstring."""

    def __init__(self, file: str | Path, count: int, dim: int):
        import faiss

        self.file, self.dim, self.count = Path(file), int(dim), int(count)
        # Kept open: a writer may replace the generation (and delete this file) while we serve.
        self._fh = open(self.file, "rb")
        try:
            self._offset = self._read_header()
            self._row_bytes = 4 * self.dim
            self._index = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16,
                                                     faiss.METRIC_INNER_PRODUCT)
            # Its codes are the rows' IEEE float16 bytes. Sized once and filled in place: adding
            # chunk by chunk would grow the vector by doubling, copying it, at up to 1.5x the peak.
            size = self.count * self._index.code_size
            assert self._index.code_size == 2 * self.dim
            self._index.codes.resize(size)
            codes = faiss.rev_swig_ptr(self._index.codes.data(), size).view(np.float16).reshape(self.count, self.dim) \
                if size else np.zeros((0, self.dim), dtype=np.float16)
            self.max_norm = 0.0
            for start, chunk in zip(range(0, self.count, CHUNK_ROWS), self.chunks()):
                norms = check_unit_rows(chunk, start, self.file)
                codes[start : start + len(chunk)] = chunk
                self.max_norm = max(self.max_norm, float(norms.max()))
            self._index.ntotal = self.count
        except BaseException:
            self._fh.close()
            raise

    def _read_header(self) -> int:
        fmt = np.lib.format
        version = fmt.read_magic(self._fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(self._fh)
        if shape != (self.count, self.dim) or fortran or dtype != np.dtype("<f4"):
            raise ValueError(f"{self.file} holds {dtype} {shape}{' (Fortran order)' if fortran else ''}, "
                             f"expected float32 ({self.count}, {self.dim})")
        offset = self._fh.tell()
        if os.fstat(self._fh.fileno()).st_size < offset + 4 * self.count * self.dim:
            raise ValueError(f"{self.file} is truncated")
        return offset

    @property
    def nbytes(self) -> int:
        return 2 * self.count * self.dim

    def close(self) -> None:
        self._fh.close()

    # -- float32 rows, read on demand -----------------------------------------------------
    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """All float32 rows in order, `rows` at a time."""
        for start in range(0, self.count, rows):
            n = min(rows, self.count - start)
            yield self._pread(start, n)

    def _pread(self, start: int, n: int) -> np.ndarray:
        size = n * self._row_bytes
        data = os.pread(self._fh.fileno(), size, self._offset + start * self._row_bytes)
        if len(data) != size:
            raise OSError(f"{self.file}: short read at row {start}")
        return np.frombuffer(data, dtype="<f4").reshape(n, self.dim)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The float32 vectors of `rows` (any order), as a new (len(rows), dim) array."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = self._pread(int(row), 1)[0]
        return out

    # -- search ---------------------------------------------------------------------------
    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The exact top `k` rows by inner product with unit `q` (among `mask`'s rows), best first,
        ties by row; and their exact float32 scores."""
        import faiss

        allowed = self.count if mask is None else int(mask.sum())
        k = min(k, allowed)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        params = None
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        eps = EPS * float(np.linalg.norm(q)) * max(self.max_norm, 1.0)
        want = min(allowed, max(2 * k, k + 32))
        while True:
            approx, rows = self._index.search(q.reshape(1, -1), want, params=params)
            approx, rows = approx[0], rows[0]
            keep = rows >= 0
            approx, rows = approx[keep], rows[keep]
            exact = self.rows(rows) @ q
            order = np.lexsort((rows, -exact))[:k]
            if want >= allowed or approx[-1] + eps < exact[order[-1]]:  # every row, or proven
                return rows[order], exact[order]
            want = min(allowed, want * 4)
