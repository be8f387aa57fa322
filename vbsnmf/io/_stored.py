"""What a stored AnnData's elements say of themselves: its X as anndata reads it
(`anndata_x`), whether a backed AnnData's file holds one (`file_holds_x`), a copy in
memory of a backed AnnData, whose file may hold no X and stays open (`in_memory_copy`), a
stored matrix read (`stored_in_memory`), an AnnData's elements but X (`without_x`), the
words that say how to read one into memory (`to_memory_advice`) and a sparse matrix
without the attribute saying its format (`check_encoded`). Apart from the readers
(`_read`), which load pandas: a fit of a backed AnnData does not."""

from __future__ import annotations

from pathlib import Path

from ._errors import ReadError


def anndata_x(adata):
    """``adata.X``, None when there is none, backed or not: a backed AnnData reads X from
    its file at every access, and for a file without one anndata's ``X`` raises h5py's
    bare KeyError ("Unable to synchronously open object") where one in memory gives None.
    A file whose X anndata cannot read for want of an attribute saying its format (h5py's
    KeyError too: `check_encoded`) is a `vbsnmf.io.ReadError` saying so:
    read as None, it was called missing ("adata.X is None; pass layer=")."""
    try:
        return adata.X
    except KeyError:
        if getattr(adata, "isbacked", False):
            if "X" in adata.file:
                check_encoded(adata.filename, adata.file["X"])
            return None
        raise


def file_holds_x(adata) -> bool:
    """Whether the file of the backed AnnData ``adata`` holds X. Its file is opened first
    if closed (the user's ``adata.to_memory()`` closes it, and a closed file holds nothing:
    ``"X" in adata.file`` was False), as ``adata.X`` reopens it."""
    if not adata.file.is_open:
        adata.file.open()
    return "X" in adata.file


def in_memory_copy(adata):
    """A copy of ``adata`` in memory, ``adata`` left as it was: ``adata.copy()`` of an
    AnnData in memory; of a backed one (of which ``adata.copy()`` asks for a file name),
    what ``adata.to_memory()`` gives, read through its own file handle, which stays open.
    anndata's ``to_memory`` closed the user's file: an X taken before (``X = adata.X``)
    then raised h5py's bare RuntimeError at its next read, and ``adata.file.is_open`` was
    False. A file without X (the counts in a layer; anndata's ``to_memory`` reads X first
    and raised h5py's bare KeyError: `anndata_x`) gives a copy without X. A file the user
    had closed is closed again."""
    if not adata.isbacked:
        return adata.copy()
    was_open = adata.file.is_open
    try:
        x = None
        if file_holds_x(adata):  # asked of the file: adata.X of one without X is a KeyError
            check_encoded(adata.filename, adata.file["X"])  # anndata's KeyError, as anndata_x
            x = stored_in_memory(adata.X)  # a view's X: its cells and genes, read
        raw_x = None if adata.raw is None else stored_in_memory(adata.raw.X)
        # a backed AnnData holds all but X and raw's X in memory, a view's as views of
        # its parent's: copy() makes them the copy's own. X and raw's X, just read, are
        # set after it, not copied a second time.
        copied = without_x(adata).copy()
        if x is not None:
            copied.X = x
        if raw_x is not None:
            import anndata as ad

            varm = {key: value.copy() for key, value in adata.raw.varm.items()}
            copied.raw = ad.AnnData(raw_x, var=adata.raw.var.copy(), varm=varm)
    finally:
        if not was_open:
            adata.file.close()
    return copied


def stored_in_memory(matrix):
    """``matrix`` (X or raw's X of a backed AnnData) in memory as stored: anndata's sparse
    dataset read whole, an h5py dataset's array; one in memory (a backed view's, read as
    the view's cells and genes) as it is."""
    if hasattr(matrix, "to_memory"):  # anndata's sparse dataset; it leaves the file open
        return matrix.to_memory()
    if type(matrix).__module__.startswith("h5py"):
        return matrix[()]
    return matrix


def without_x(adata):
    """An AnnData of ``adata``'s elements but X and raw (what a backed AnnData holds in
    memory: obs, var, uns, obsm, varm, obsp, varp, layers), sharing them."""
    import anndata as ad

    return ad.AnnData(
        obs=adata.obs,
        var=adata.var,
        uns=dict(adata.uns),
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        obsp=dict(adata.obsp),
        varp=dict(adata.varp),
        layers=dict(adata.layers),
    )


def to_memory_advice(adata, name: str = "adata") -> str:
    """How to read the backed AnnData ``adata`` (named ``name``), or a view of one, into
    memory, for a message: anndata's ``.to_memory()``, or where its file holds no X (which
    ``to_memory`` reads first: h5py's bare KeyError) the file read whole by anndata, of
    which a view takes the same cells and genes."""
    held = "the view" if adata.is_view else name
    if file_holds_x(adata):
        return f"call .to_memory() on {held} first"
    read = f"anndata.read_h5ad({str(adata.filename)!r})"
    if adata.is_view:
        read += f"[{name}.obs_names, {name}.var_names]"
    return f"its file holds no X, which .to_memory() reads: read {held} into memory with {read}"


def check_encoded(path: str | Path, stored) -> None:
    """A `ReadError` for the stored sparse matrix ``stored`` (a group of ``path``: X, a
    layer, raw's X) with no attribute saying its format: neither the ``encoding-type`` of
    anndata 0.7 and later nor the ``h5sparse_format`` of anndata before 0.7 (which anndata
    still reads), as a tool that writes its own layout stores one. anndata cannot read
    it (its message a list of types, not the attribute), and a backed AnnData's X read as
    missing ("adata.X is None; pass layer=")."""
    if stored is None or not hasattr(stored, "keys"):
        return
    if "encoding-type" in stored.attrs or "h5sparse_format" in stored.attrs:
        return
    name = stored.name.lstrip("/")
    raise ReadError(
        path,
        f"{name} is a group without the 'encoding-type' attribute that says a matrix's "
        "format (nor the 'h5sparse_format' of anndata before 0.7), which anndata cannot "
        "read: write the file again with anndata (adata.write_h5ad), from the tool that "
        "made it",
    )
