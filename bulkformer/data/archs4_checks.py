"""Checks of an ARCHS4 file's layout before any read: its error types, the orientation of
``data/expression`` decided from both metadata lengths, metadata fields of equal length, and
the conversion of h5py failures on damaged files into errors naming the file and the field.

Orientation: ``data/expression`` is genes × samples when its first axis has as many entries as
the ``meta/genes`` fields and its second as many as the ``meta/samples`` fields, and samples ×
genes the other way round. When both readings fit (a square matrix: as many samples as genes)
the file is refused unless the layout is stated; a stated layout must fit as well.
"""

from __future__ import annotations

import contextlib

import h5py

__all__ = [
    "ARCHS4FormatError",
    "ARCHS4IndexError",
    "ARCHS4KeyError",
    "LAYOUTS",
    "damaged_file_errors",
    "field_length",
    "lock_hint",
    "orientation",
]


class ARCHS4FormatError(ValueError):
    """The file does not have the ARCHS4 layout (names the file and the field)."""


class ARCHS4KeyError(ARCHS4FormatError, KeyError):
    """A sample field or GEO accession the file lacks: a ValueError with a plain message (for
    the command line), and a KeyError for callers that look things up."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ARCHS4IndexError(ARCHS4FormatError, IndexError):
    """A sample position outside the file: a ValueError and an IndexError."""


@contextlib.contextmanager
def damaged_file_errors(path: str, what: str):
    """Turn an HDF5/h5py failure while reading ``what`` of ``path`` into an
    :class:`ARCHS4FormatError` naming both (errors that already name the file pass as they are).

    A damaged file makes h5py raise OSError, KeyError, RuntimeError, TypeError or ValueError
    with messages such as "Unable to synchronously open object (bad symbol table)" that name
    neither the file nor the field.
    """
    try:
        yield
    except ARCHS4FormatError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, ValueError) and path in str(e):
            raise
        if isinstance(e, FileNotFoundError):
            raise
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ARCHS4FormatError(
            f"{path}: cannot read {what} ({type(e).__name__}: {text}); expected a readable "
            "ARCHS4 gene-level HDF5 file (damaged or truncated?)"
        ) from e


def lock_hint(e: BaseException) -> str:
    """A hint to append to an HDF5 open error when the cause is file locking ('' otherwise)."""
    if "lock" in str(e).lower():
        return (
            ": the file is locked — another process has it open for writing (wait for it), or "
            "the file system does not support locks (then set HDF5_USE_FILE_LOCKING=FALSE)"
        )
    return ""


def field_length(h5: h5py.File, path: str, fields: dict[str, str], group: str) -> int | None:
    """The common length of 1-D metadata fields (None when there are none), checked up
    front so that a field one entry short fails here, naming it, not later as an IndexError."""
    lengths: dict[str, int] = {}
    for p in fields.values():
        shape = h5[p].shape
        if shape is None or len(shape) != 1:
            raise ARCHS4FormatError(
                f"{path}: metadata field {p} has shape {shape}; expected a 1-D array "
                f"with one entry per {'gene' if 'genes' in group else 'sample'}"
            )
        lengths[p] = int(shape[0])
    if not lengths:
        return None
    values = sorted(set(lengths.values()))
    if len(values) > 1:
        common = max(values, key=list(lengths.values()).count)
        odd = {p: n for p, n in lengths.items() if n != common}
        ex = ", ".join(f"{p} has {n:,}" for p, n in list(odd.items())[:3])
        raise ARCHS4FormatError(
            f"{path}: {group} fields differ in length: {ex} entries, the others "
            f"{common:,}; expected one entry per {'gene' if 'genes' in group else 'sample'} "
            "in every field (truncated or edited file?)"
        )
    return values[0]


#: accepted spellings of the layout argument → whether storage is samples × genes
LAYOUTS = {
    "auto": None,
    "genes×samples": False,
    "genes-by-samples": False,
    "genes_x_samples": False,
    "samples×genes": True,
    "samples-by-genes": True,
    "samples_x_genes": True,
}


def orientation(
    path: str, shape: tuple, n_genes: int | None, n_samples: int | None, layout: str
) -> bool:
    """Whether ``data/expression`` is stored samples × genes, from both metadata lengths."""
    n0, n1 = shape
    shape = f"{n0:,} × {n1:,}"
    ns = "no sample fields" if n_samples is None else f"{n_samples:,} entries"
    fits = {
        t: n_genes == (n1 if t else n0) and (n_samples is None or n_samples == (n0 if t else n1))
        for t in (False, True)
    }
    stated = LAYOUTS[layout]
    if stated is not None:
        if not fits[stated]:
            raise ARCHS4FormatError(
                f"{path}: data/expression is {shape}, meta/genes has {n_genes:,} entries "
                f"and meta/samples {ns}: that is not {layout} (layout given)"
            )
        return stated
    if fits[False] and fits[True]:
        raise ARCHS4FormatError(
            f"{path}: data/expression is {shape} and meta/genes has {n_genes:,} entries, "
            f"meta/samples {ns}: genes × samples and samples × genes both fit, so the "
            "orientation is ambiguous; state it with layout='genes-by-samples' or "
            "'samples-by-genes' (--archs4-layout)"
        )
    if not (fits[False] or fits[True]):
        raise ARCHS4FormatError(
            f"{path}: data/expression is {shape} but meta/genes has {n_genes:,} entries "
            f"and meta/samples {ns}: expected genes × samples (or samples × genes) matching "
            "both"
        )
    return fits[True]
