"""Data-parallel, resumable sample embedding: ``bulkformer embed`` under ``torchrun``.

::

    torchrun --standalone --nproc_per_node 8 -m bulkformer.cli embed \\
        --checkpoint ckpt --corpus corpus --out emb.npy          # resumable: OUT.parts/

The N samples are cut into chunks of ``chunk_rows`` consecutive samples (a multiple of the
batch size); rank r of W takes the contiguous run of chunks ``[k·r/W, k·(r+1)/W)`` of the k
chunks, so every rank embeds one contiguous shard of samples. Each finished chunk is committed as
its own file ``PARTS/chunk-000123.npy`` (written to a temporary name, then renamed), so a run
that is killed loses at most one chunk per rank; rerunning the same command skips the chunks
already there — also with another number of ranks. When all chunks exist, rank 0 assembles them
in input order into the output (again through a temporary file) and removes ``PARTS``.

The batches are the same as those of one process (chunks start at multiples of the batch size),
so the output equals :func:`bulkformer.eval.embed.embed` of the same input. ``PARTS/manifest.json``
records what the chunks belong to (samples, model, pooling, chunk size); a rerun with other
settings is refused instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .._io import atomic_file, write_atomic
from .embed import prepare_input, resolve_pretrained, run_model

__all__ = [
    "chunk_ranges",
    "rank_chunks",
    "embed_sharded",
    "embed_distributed",
    "under_torchrun",
    "run_embed_cli",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def under_torchrun() -> bool:
    """True when this process is one rank of a multi-process job (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def chunk_ranges(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``n`` samples cut into consecutive chunks of ``chunk_rows``."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return [(a, min(a + chunk_rows, n)) for a in range(0, n, chunk_rows)]


def rank_chunks(n_chunks: int, rank: int, world: int) -> range:
    """The contiguous, balanced run of chunk indices rank ``rank`` of ``world`` embeds."""
    return range(n_chunks * rank // world, n_chunks * (rank + 1) // world)


def _chunk_path(parts: Path, i: int) -> Path:
    return parts / f"chunk-{i:06d}.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file renamed over ``path`` (never a half-written file)."""
    with atomic_file(path, unique=True) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _fingerprint(prep, pre, how: str, chunk_rows: int) -> dict:
    names = "\n".join(map(str, prep.obs.index)).encode()
    cfg = pre.model.config
    return {
        "n_obs": int(prep.n_obs),
        "samples_sha1": hashlib.sha1(names).hexdigest()[:16],
        "input_kind": prep.kind,
        "model": str(getattr(pre, "path", "")),
        "config": cfg.to_dict(),
        "d_model": cfg.d_model,
        "how": how,
        "chunk_rows": int(chunk_rows),
    }


def _check_manifest(parts: Path, fp: dict, is_main: bool, barrier) -> None:
    """Write ``PARTS/manifest.json`` (rank 0) or refuse one left by other settings."""
    m = parts / MANIFEST
    if m.exists():
        old = json.loads(m.read_text())
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        if diff:
            raise ValueError(
                f"{parts}: holds embedding chunks of another run (differs in {', '.join(diff)}); "
                f"delete {parts} or pass --parts to another directory to start over"
            )
    elif is_main:
        parts.mkdir(parents=True, exist_ok=True)
        write_atomic(m, json.dumps(fp, indent=1, sort_keys=True).encode())
    barrier()


def embed_sharded(
    prep,
    pre,
    parts,
    *,
    how: str | None = None,
    batch_size: int = 16,
    chunk_rows: int = 1024,
    device=None,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    barrier=lambda: None,
) -> np.ndarray | None:
    """Embed this rank's chunks of ``prep`` into ``parts`` and, on rank 0, assemble them.

    Parameters
    ----------
    prep : :class:`~bulkformer.eval.embed.PreparedInput`
    pre : :class:`~bulkformer.model.pretrained.Pretrained`
    parts : directory of the committed chunk files (created; reused by a rerun)
    chunk_rows : samples per committed chunk; rounded up to a multiple of ``batch_size``
    rank, world, barrier : this process' rank, the number of ranks, and a barrier over them

    Returns
    -------
    (N, D) float32 embeddings in input order on rank 0 (None on the other ranks).
    """
    from tqdm.auto import tqdm

    parts = Path(parts)
    how = how or pre.model.config.pooling  # None: the checkpoint's pooling, as embed()
    chunk_rows = -(-max(chunk_rows, batch_size) // batch_size) * batch_size
    _check_manifest(parts, _fingerprint(prep, pre, how, chunk_rows), rank == 0, barrier)
    chunks = chunk_ranges(prep.n_obs, chunk_rows)
    mine = rank_chunks(len(chunks), rank, world)
    todo = [i for i in mine if not _chunk_path(parts, i).exists()]
    n_mine = sum(chunks[i][1] - chunks[i][0] for i in mine)
    n_todo = sum(chunks[i][1] - chunks[i][0] for i in todo)
    if len(mine):
        log.info(
            "rank %d/%d: samples %d-%d, %d of %d chunks to embed (%d already committed)",
            rank, world, chunks[mine[0]][0], chunks[mine[-1]][1] - 1, len(todo), len(mine),
            len(mine) - len(todo),
        )  # fmt: skip
    bar = tqdm(
        total=n_mine,
        initial=n_mine - n_todo,
        desc=f"embed (rank {rank}/{world})" if world > 1 else "embed",
        unit="sample",
        disable=not progress or rank != 0,
    )
    try:
        for i in todo:
            a, b = chunks[i]
            emb, _ = run_model(
                prep, pre.model, how=how, batch_size=batch_size, device=device,
                progress=False, rows=np.arange(a, b),
            )  # fmt: skip
            _atomic_save(_chunk_path(parts, i), emb)
            bar.update(b - a)
    finally:
        bar.close()
    barrier()
    if rank != 0:
        return None
    missing = [i for i in range(len(chunks)) if not _chunk_path(parts, i).exists()]
    if missing:
        raise RuntimeError(f"{parts}: chunks {missing[:5]} were not written by their ranks")
    D = pre.model.config.d_model
    out = np.empty((prep.n_obs, D), dtype=np.float32)
    for i, (a, b) in enumerate(chunks):
        part = np.load(_chunk_path(parts, i))
        if part.shape != (b - a, D):
            raise ValueError(
                f"{_chunk_path(parts, i)}: shape {part.shape}, expected {(b - a, D)} "
                "(a chunk of another run): delete the parts directory to start over"
            )
        out[a:b] = part
    return out


def _dist(device=None):
    """(info, barrier, teardown) from torchrun's environment (one process: trivial)."""
    from ..train.distributed import setup_distributed, teardown_distributed

    info = setup_distributed(device or "auto")
    if not info.distributed:
        return info, (lambda: None), (lambda: teardown_distributed(info))
    import torch.distributed as dist

    return info, dist.barrier, (lambda: teardown_distributed(info))


def embed_distributed(
    data,
    pretrained,
    out,
    *,
    parts=None,
    values: str = "counts",
    gene_ids=None,
    layer: str | None = None,
    gene_column: str | None = None,
    how: str | None = None,
    batch_size: int = 16,
    chunk_rows: int = 1024,
    device=None,
    progress: bool = True,
    keep_parts: bool = False,
    **input_options,
) -> np.ndarray | None:
    """Embed ``data`` over all ranks of a torchrun job (or one process) into ``out`` (.npy).

    Same inputs as :func:`bulkformer.eval.embed.embed` (further keywords go to
    :func:`~bulkformer.eval.embed.prepare_input`, e.g. ``min_gene_overlap``). Chunks are committed under ``parts``
    (default ``OUT.parts``); a rerun resumes. Rank 0 writes ``out`` atomically and returns the
    (N, D) array; other ranks return None. ``device`` None: ``cuda:LOCAL_RANK`` when available.
    """
    info, barrier, teardown = _dist(device)
    try:
        out = Path(out)
        pre = resolve_pretrained(pretrained)
        prep = prepare_input(
            data, pre, values=values, gene_ids=gene_ids, layer=layer, gene_column=gene_column,
            **input_options,
        )  # fmt: skip
        parts = Path(parts) if parts is not None else out.with_name(out.name + ".parts")
        emb = embed_sharded(
            prep, pre, parts, how=how, batch_size=batch_size, chunk_rows=chunk_rows,
            device=info.device, progress=progress, rank=info.rank, world=info.world,
            barrier=barrier,
        )  # fmt: skip
        if emb is not None:
            _atomic_save(out, emb)
            if not keep_parts:
                shutil.rmtree(parts, ignore_errors=True)
        return emb
    finally:
        teardown()


def run_embed_cli(args, data, kw: dict) -> int:
    """``bulkformer embed`` with ``--parts`` or under torchrun: sharded, resumable; rank 0
    writes ``--out`` (.npy, or .h5ad with the input's obs) and prints the summary."""
    import anndata as ad

    from ..data.corpus import Corpus

    out = Path(args.out)
    parts = Path(args.parts) if getattr(args, "parts", None) else out.with_name(out.name + ".parts")
    npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy.tmp")
    emb = embed_distributed(
        data, args.checkpoint, npy, parts=parts, chunk_rows=args.chunk_rows,
        progress=not args.no_progress and sys.stderr.isatty(), **kw,
    )  # fmt: skip
    if emb is None:
        return 0
    if out.suffix == ".h5ad":
        npy.unlink(missing_ok=True)
        if isinstance(data, Corpus):
            obs = data.samples.set_index("sample_id")
            obs.index = obs.index.astype(str)
            adata = ad.AnnData(obs=obs)
        else:
            adata = data
        adata.obsm[args.key_added] = emb
        info = dict(adata.uns.get("bulkformer", {}))
        pooling = args.how or resolve_pretrained(args.checkpoint).model.config.pooling
        info.update(model=str(args.checkpoint), pooling=pooling, key_added=args.key_added)
        adata.uns["bulkformer"] = info
        with atomic_file(out) as tmp:
            adata.write_h5ad(tmp)
    print(f"wrote {emb.shape[0]:,} × {emb.shape[1]} embeddings to {out}")
    return 0
