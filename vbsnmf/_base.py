"""scikit-learn's estimator contract without importing scikit-learn.

Importing scikit-learn takes about 1.3 s and 90 MiB (it loads scipy.stats and pandas):
more than a batch fit of pbmc_facs allocates, and most of a small command's run time.
`Estimator` gives `VBNMF` and `VBNTF` the parts of scikit-learn's ``BaseEstimator`` they
use: parameters read from the constructor's signature (`get_params`, `set_params`, so
``clone``, pipelines and grid searches work), a repr of the parameters set (and
scikit-learn's HTML diagram in notebooks where it is loaded), tags built when
scikit-learn asks for them (it is loaded then), and metadata routing
(``set_fit_request``, ``get_metadata_routing``: scikit-learn's own code, run when it is
enabled). A transformer (`VBNMF`) also gets what
scikit-learn's ``TransformerMixin`` adds: `get_feature_names_out` and `set_output`, the
container of `transform`'s output (pandas inside a pipeline). Errors and warnings that
scikit-learn has a class for (`NotFittedError`, the convergence warning) are raised as
subclasses of scikit-learn's too whenever scikit-learn is loaded, so an ``except`` or a
warnings filter on either class catches them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import types
from collections import Counter

import numpy as np

from ._utils import shape_repr, sklearn_flavoured, warn_user


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before `fit` (scikit-learn's ``NotFittedError`` too when
    scikit-learn is loaded)."""


def check_fitted(estimator, attribute: str) -> None:
    """Raise `NotFittedError` (scikit-learn's wording) unless ``estimator`` has
    ``attribute``; one fitted (it holds ``components_``) by an earlier version of vbsnmf
    that named its fitted attributes otherwise (``obs_shape_``, ``var_shape_`` before
    2026-12-01's ``cell_shape_``, ``gene_shape_``) is told so, not "not fitted yet"."""
    if not hasattr(estimator, attribute):
        if hasattr(estimator, "components_"):  # unpickled from an earlier version
            raise sklearn_flavoured(NotFittedError, "NotFittedError")(
                f"This {type(estimator).__name__} was fitted by an earlier version of vbsnmf: "
                f"it holds components_ but not {attribute}, which this version reads; fit "
                "it again with this version (or unpickle it with the version that wrote it)"
            )
        raise sklearn_flavoured(NotFittedError, "NotFittedError")(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            "appropriate arguments before using this estimator."
        )


def feature_names(X, name: str = "X") -> np.ndarray | None:
    """The column names of a DataFrame ``X`` (called ``name`` in messages) when every one is
    a string, None when none is (scikit-learn's rule).

    Raises
    ------
    TypeError
        Some names are strings and some are not (as scikit-learn refuses them): neither taking
        them nor dropping them would check the genes by name.
    """
    columns = getattr(X, "columns", None)
    if columns is None:
        return None
    kinds = sorted({type(column).__name__ for column in columns})
    if kinds == ["str"]:
        return np.asarray(columns, dtype=object)
    if "str" in kinds:
        raise TypeError(
            f"{name}'s column names mix types {kinds}: gene names are only supported if all "
            f"of them are strings; convert them ({name}.columns = {name}.columns.astype(str)) "
            "or give none, so that the genes are checked by name or not at all"
        )
    return None


def names_differ(names, other_names, noun: str, other: str, own: str = "X") -> str | None:
    """How ``other_names`` (``other``'s ``noun``, e.g. a mask's columns) differ from
    ``names`` (``own``'s), in a message's words; None when they are the same or either is
    missing (no names to compare)."""
    if names is None or other_names is None or np.array_equal(names, other_names):
        return None
    extra = len(set(other_names) - set(names))
    missing = len(set(names) - set(other_names))
    if not extra and not missing:
        repeated = repeated_otherwise(names, other_names)
        if repeated:  # not another order: no reordering matches them
            return (
                f"the same {noun}, but {other} repeats {_quoted(repeated)} another number "
                f"of times than {own}"
            )
        return f"the same {noun} in another order"
    return f"{extra} of {other}'s {noun} are not {own}'s, {missing} of {own}'s not {other}'s"


def repeated_otherwise(names, other_names) -> list:
    """The names that ``other_names`` holds another number of times than ``names`` (both
    holding the same set of names), sorted: a repeated gene column (an AnnData's
    ``to_df()`` before ``var_names_make_unique``) is no other order of the genes."""
    counts, other_counts = Counter(names), Counter(other_names)
    return sorted(name for name in counts if counts[name] != other_counts[name])


def _quoted(names, limit: int = 3) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def check_entry_columns(X, entries, name: str) -> None:
    """``entries`` (``mask``, ``weights``: a value per entry of X) against X's column names,
    and its row names, when both have names (DataFrames; rows named by strings, as cells
    are): other names or another order are a `ValueError`, as the entries would be matched
    with X's genes and cells by position."""
    if _is_transposed(X, entries, name):  # else told to reorder it by X's genes, mask[X.columns]
        raise ValueError(
            f"{name} is X's transpose (genes x cells: its columns are X's cells, its rows "
            f"X's genes); pass it as cells x genes, {name}.T"
        )
    check_column_names(X, entries, name)
    # the cells too: a frame of weights in another cell order moved one cell's weights
    # onto another's without a word
    check_row_names(X, entries, name)


def _is_transposed(X, frame, name: str) -> bool:
    """Whether ``frame`` names X's cells as its columns and X's genes as its rows (X and
    ``frame`` DataFrames whose names are strings; not when X's cells and genes share
    their names, where either reading fits)."""
    x_genes, x_cells = feature_names(X), row_names(X)
    columns, rows = feature_names(frame, name), row_names(frame)
    if any(names is None for names in (x_genes, x_cells, columns, rows)):
        return False
    x_genes, x_cells = set(x_genes), set(x_cells)
    return x_genes != x_cells and set(columns) == x_cells and set(rows) == x_genes


def check_column_names(X, frame, name: str) -> None:
    """``frame``'s column names (genes: a mask of X's shape, or of the gene side) against
    X's when both have them: other names or another order are a `ValueError`."""
    genes, columns = feature_names(X), feature_names(frame, name)
    detail = names_differ(genes, columns, "columns", name)
    if detail is not None:
        advice = _matching_advice(genes, columns, "column", f"{name}[X.columns]")
        raise ValueError(
            f"{name} has other column names than X ({detail}): its entries would be matched "
            f"with X's by position; {advice}"
        )


def check_row_names(X, frame, name: str) -> None:
    """``frame``'s row names (cells: a mask of X's shape, or of the cell side) against X's
    when both are DataFrames with string row names: other names or another order are a
    `ValueError`."""
    cells, rows = row_names(X), row_names(frame)
    detail = names_differ(cells, rows, "rows", name)
    if detail is not None:
        advice = _matching_advice(cells, rows, "row", f"{name}.loc[X.index]")
        raise ValueError(
            f"{name} has other row names than X ({detail}): its entries would be matched "
            f"with X's cells by position; {advice}"
        )


def _matching_advice(names, other_names, kind: str, reordered: str) -> str:
    """How to match a frame's ``kind`` (``"row"``, ``"column"``) names ``other_names`` to
    X's ``names``: ``reordered`` (the frame in X's order), unless the two hold the same
    names repeated another number of times, which no order matches (and which
    ``reordered`` takes once for each time X names them)."""
    if set(names) == set(other_names) and repeated_otherwise(names, other_names):
        return f"make the {kind} names unique in both"
    return f"pass them in X's order, {reordered}"


def row_names(frame) -> np.ndarray | None:
    """The index of a DataFrame when its labels are strings (cell names), else None (a
    default range index, numbers: nothing to match by)."""
    if not hasattr(frame, "columns") or not hasattr(frame, "index"):
        return None
    if getattr(frame.index, "inferred_type", None) != "string":
        return None
    return np.asarray(frame.index, dtype=object)


def _listed(names) -> str:
    shown = [f"- {name}\n" for name in names[:5]]
    return "".join(shown) + ("- ...\n" if len(names) > 5 else "")


def name_hashes(names) -> np.ndarray:
    """Each of ``names``' 64-bit hash (uint64): pandas' `pandas.util.hash_array` of its
    text, the same in every run and on every platform (`names_digests`). Loads pandas."""
    import pandas as pd

    text = np.asarray(pd.Index(names).astype(str), dtype=object)
    try:
        return pd.util.hash_array(text, categorize=False)
    except UnicodeEncodeError:
        # a lone surrogate (a name decoded with surrogateescape) has no UTF-8: pandas
        # raised, and failed the fit. Its bytes as "surrogatepass" writes them, which are
        # UTF-8's for every other name, so their hashes are those above.
        encoded = [name.encode("utf-8", "surrogatepass") for name in text]
        return pd.util.hash_array(np.asarray(encoded, dtype=object), categorize=False)


def names_digests(names) -> tuple[str, str]:
    """Two digests (16 hex digits each) of ``names`` (cell or gene names): one that ignores
    their order, each name's 64-bit hash (pandas' `pandas.util.hash_array` of its text, the
    same in every run and on every platform) summed modulo 2**64, and one of the names in
    their order. The same names in another order share the first only; a name swapped for
    another, or repeated in place of one, changes both (but for a chance of 1 in 2**64).
    One vectorised pass: about 0.3 s for a million cell barcodes. Loads pandas (a
    DataFrame's index, an AnnData's names: loaded already)."""
    hashed = name_hashes(names)
    return order_free_digest(hashed), hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def order_free_digest(hashes: np.ndarray) -> str:
    """`names_digests`' first digest from the names' `name_hashes`: their sum modulo
    2**64, as 16 hex digits."""
    return f"{int(hashes.sum(dtype=np.uint64)):016x}"


def remember_cell_names(estimator, X) -> None:
    """``estimator._cell_names``: the `names_digests` of the row names of a DataFrame
    fitted (none otherwise), by which a warm start from the estimator
    (`check_init_cells`) tells its cells in another order. Digests, not the names: a
    million cells' names would outweigh the fit."""
    names = row_names(X)
    if names is None:
        estimator.__dict__.pop("_cell_names", None)
    else:
        estimator._cell_names = names_digests(names)


def check_init_cells(init, X) -> None:
    """A `ValueError` when ``init``, an estimator fitted on a DataFrame with cell names, is
    to start X (a DataFrame) holding the same cells in another order: its cell side starts
    X's cells by position, each from another cell's parameters, silently another start
    than the fit it continues (the genes are matched by name: ``feature_names_in_``).
    Other cells, or X or the fit without cell names, are not checked: nothing tells
    whose parameters those are."""
    fitted, names = getattr(init, "_cell_names", None), row_names(X)
    if fitted is None or names is None:
        return
    order_free, ordered = names_digests(names)
    if order_free == fitted[0] and ordered != fitted[1]:
        raise ValueError(
            "init was fitted on X's cells in another order (X's row names): its cell side "
            "would start each of X's cells from another cell's parameters; pass X's rows "
            "in the order init was fitted on (X.loc[fitted.index], fitted the frame init "
            "was fitted on)"
        )


def remember_feature_names(estimator, X) -> None:
    """``estimator.feature_names_in_``: the gene names of a DataFrame fitted (none
    otherwise). Functions, not methods: the classical `NMF` is a scikit-learn
    ``BaseEstimator``, whose own ``_check_feature_names`` method older versions call."""
    names = feature_names(X)
    if names is None:
        estimator.__dict__.pop("feature_names_in_", None)
    else:
        estimator.feature_names_in_ = names


def check_feature_names(estimator, X) -> None:
    """New data's column names against the fitted ones, as scikit-learn checks them:
    other names or another order are a `ValueError` (the genes would be matched by
    position; X whose row names hold the fitted genes is named as the transpose), names on
    one side only a warning."""
    fitted, names = getattr(estimator, "feature_names_in_", None), feature_names(X)
    kind = type(estimator).__name__
    if fitted is None and names is not None:
        warn_user(f"X has feature names, but {kind} was fitted without feature names", UserWarning)
    elif fitted is not None and names is None:
        warn_user(
            f"X does not have valid feature names, but {kind} was fitted with feature names",
            UserWarning,
        )
    if fitted is None or names is None or np.array_equal(fitted, names):
        return
    message = "The feature names should match those that were passed during fit.\n"
    unseen = sorted(set(names) - set(fitted))
    missing = sorted(set(fitted) - set(names))
    if unseen:
        message += "Feature names unseen at fit time:\n" + _listed(unseen)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + _listed(missing)
    repeated = [] if unseen or missing else repeated_otherwise(fitted, names)
    if repeated:
        # the same names, one repeated: "in the same order" sent the user reordering
        # columns that no order matches
        message += "Feature names repeated another number of times than in fit:\n" + "".join(
            f"- {name}: {list(names).count(name)} in X, {list(fitted).count(name)} at fit time\n"
            for name in repeated[:5]
        )
        message += "- ...\n" if len(repeated) > 5 else ""
    elif not unseen and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    rows = row_names(X)
    if missing and rows is not None and set(fitted) <= set(rows):
        # every fitted gene names a row: X is genes x cells (a table of genes as rows read
        # whole), whose cells were listed as unseen features and genes as missing ones
        message += (
            "X's row names are the feature names seen at fit time: X is genes x cells, the "
            "transpose of what was fitted; pass X.T (cells x genes).\n"
        )
    raise ValueError(message)


def check_output_columns(estimator, X) -> None:
    """``inverse_transform``'s X against ``estimator``'s output names
    (``get_feature_names_out``: ``vbnmf0``, ``vbnmf1``, ...): a DataFrame whose columns
    carry those names at other positions (`transform`'s pandas output with its columns
    sorted, which puts ``vbnmf10`` before ``vbnmf2``, or selected in another order) is a
    `ValueError`, as its factors would be multiplied with other components by position.
    Columns named otherwise (the user's own names) are taken by position, as scikit-learn
    takes them."""
    columns = getattr(X, "columns", None)
    if columns is None or len(getattr(X, "shape", ())) != 2:  # a frame (pandas, polars)
        return
    output = [str(name) for name in estimator.get_feature_names_out()]
    position = {name: k for k, name in enumerate(output)}
    misplaced = [
        name
        for k, name in enumerate(columns)
        if isinstance(name, str) and name in position and position[name] != k
    ]
    if misplaced:
        raise ValueError(
            f"X's columns are named as {type(estimator).__name__}'s output columns in another "
            f"order ({_quoted(misplaced)} out of place): the factors would be "
            "multiplied with other components by position; pass them in the output's order, "
            "X[model.get_feature_names_out()]"
        )


def transposed_hint(shape, n_features: int) -> str:
    """The advice added to `transform`'s "X has m features, but ... is expecting n" when
    X of ``shape`` has ``n_features`` rows (the fitted genes) and not as many columns: a
    genes x cells matrix, as Seurat and 10x store counts, whose cells were counted as its
    features; "" otherwise."""
    if len(shape) != 2 or shape[0] != n_features or shape[1] == n_features:
        return ""
    return (
        f"; X has {n_features} rows, as many as the fitted features: if its rows are the "
        "genes (genes x cells), pass X.T"
    )


class _TransformerMethod:
    """A method only transformers (``_transformer = True``) have: scikit-learn asks
    ``hasattr(estimator, "set_output")`` (its ``available_if``), so elsewhere the name
    raises `AttributeError`."""

    def __init__(self, method):
        self.method = method
        functools.update_wrapper(self, method)

    def __get__(self, instance, owner=None):
        cls = owner if instance is None else type(instance)
        if not cls._transformer:
            raise AttributeError(
                f"{cls.__name__} is not a transformer: it has no {self.method.__name__!r}"
            )
        return self.method if instance is None else types.MethodType(self.method, instance)


def _configured_output(method):
    """``method`` (``transform`` or ``fit_transform``) returning the container that
    `set_output` or scikit-learn's global ``transform_output`` asks for, as scikit-learn's
    ``_SetOutputMixin`` wraps its transformers' methods. Neither can ask for anything but
    the array itself while scikit-learn is not loaded and `set_output` was not called."""

    @functools.wraps(method)
    def wrapped(self, X, *args, **kwargs):
        data = method(self, X, *args, **kwargs)
        if sys.modules.get("sklearn") is None and not hasattr(self, "_sklearn_output_config"):
            return data
        # scikit-learn's own wrapping (private, unchanged since 1.2): the same containers,
        # index and checks as its transformers'.
        from sklearn.utils._set_output import _wrap_data_with_container

        return _wrap_data_with_container("transform", data, X, self)

    return wrapped


class Estimator:
    """Parameters from ``__init__``'s signature, as scikit-learn's ``BaseEstimator``
    reads them; subclasses store every parameter under its own name and nothing else in
    ``__init__``. ``_transformer = True`` marks a transformer (scikit-learn's tags): one
    whose fitted ``components_`` (K x features) make K output columns, named by
    `get_feature_names_out`, in the container `set_output` chooses."""

    _transformer = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls._transformer:
            # What scikit-learn's set_output machinery reads (its _SetOutputMixin).
            cls._sklearn_auto_wrap_output_keys = {"transform"}
            for name in ("transform", "fit_transform"):
                if name in cls.__dict__:
                    setattr(cls, name, _configured_output(cls.__dict__[name]))

    @_TransformerMethod
    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns, as scikit-learn names a decomposition's: the
        class name in lower case and the component's index (``vbnmf0``, ``vbnmf1``, ...).

        ``input_features``, if given, must be the fitted features: ``feature_names_in_``
        when fitted with names, else any names of length ``n_features_in_``.

        Raises
        ------
        NotFittedError
            Before `fit`.
        ValueError
            ``input_features`` other than the fitted features (scikit-learn's messages).
        """
        check_fitted(self, "components_")
        if input_features is not None:
            input_features = np.asarray(input_features, dtype=object)
            fitted = getattr(self, "feature_names_in_", None)
            if fitted is not None and not np.array_equal(fitted, input_features):
                raise ValueError("input_features is not equal to feature_names_in_")
            if len(input_features) != self.n_features_in_:
                raise ValueError(
                    "input_features should have length equal to number of features "
                    f"({self.n_features_in_}), got {len(input_features)}"
                )
        prefix = type(self).__name__.lower()
        n_components = np.asarray(self.components_).shape[0]
        return np.asarray([f"{prefix}{k}" for k in range(n_components)], dtype=object)

    @_TransformerMethod
    def set_output(self, *, transform=None):
        """Set the container of `transform`'s and `fit_transform`'s output, as
        scikit-learn's ``set_output``.

        Parameters
        ----------
        transform
            ``"default"`` (a numpy array), ``"pandas"`` or ``"polars"`` (a DataFrame with
            the columns of `get_feature_names_out`, checked by scikit-learn when it is
            used), or None: unchanged.

        Returns
        -------
        self
        """
        if transform is not None:
            self.__dict__.setdefault("_sklearn_output_config", {})["transform"] = transform
        return self

    @classmethod
    def _get_param_names(cls) -> list[str]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in parameters if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters and their values (``deep`` is accepted for
        scikit-learn's sake; no parameter here is an estimator)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor parameters by name; returns the estimator."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {self}. Valid parameters "
                    f"are: {valid!r}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        """``Name(param=value, ...)`` with the parameters that differ from their defaults,
        in the signature's order (as scikit-learn prints its estimators); every parameter
        under scikit-learn's ``set_config(print_changed_only=False)``."""
        names = set(self._get_param_names())
        every = not _sklearn_config("print_changed_only", True)
        changed = [
            f"{name}={_parameter_repr(getattr(self, name))}"
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if name in names and (every or not _is_default(getattr(self, name), parameter.default))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _repr_html_(self) -> str | None:
        """scikit-learn's HTML diagram in a notebook when scikit-learn is loaded (scanpy
        loads it) and its ``display`` setting is ``"diagram"`` (its default); otherwise
        None, and the notebook shows the text repr."""
        if _sklearn_config("display", "text") != "diagram":
            return None
        from sklearn.utils import estimator_html_repr

        return estimator_html_repr(self)

    # The diagram's tables of parameters (scikit-learn 1.7 on) and fitted attributes (1.8
    # on), which it draws for an estimator that has these methods; scikit-learn's own code,
    # run on this class (it reads `get_params`, the signature's defaults and the public
    # attributes ending in "_"), with the arguments its version passes. Without them a
    # notebook showed the bare repr in the box.
    def _get_params_html(self, *args, **kwargs):
        from sklearn.base import BaseEstimator

        return BaseEstimator._get_params_html(self, *args, **kwargs)

    def _get_fitted_attr_html(self, *args, **kwargs):
        from sklearn.base import BaseEstimator

        return BaseEstimator._get_fitted_attr_html(self, *args, **kwargs)

    # -- scikit-learn's metadata routing (its ``_MetadataRequester``, which BaseEstimator
    # inherits): with ``enable_metadata_routing`` set, a pipeline or a search passes `fit`'s
    # keyword arguments (``mask``, ``init``, ``callback``; a tensor's ``values``) only to an
    # estimator that requests them, and refused them all while these were missing. The
    # requests are kept in ``_metadata_request``, which scikit-learn's ``clone`` copies.
    def set_fit_request(self, **requests):
        """Request `fit`'s keyword arguments from a meta-estimator (a pipeline, a search)
        under scikit-learn's metadata routing, as scikit-learn's ``set_fit_request``:
        ``True`` to receive one, ``False`` not to, a string to receive it under another
        name. Needs ``sklearn.set_config(enable_metadata_routing=True)`` (`RuntimeError`
        otherwise). Returns self."""
        from sklearn.utils._metadata_requests import RequestMethod

        parameters = list(inspect.signature(type(self).fit).parameters.values())[1:]
        keys = [
            p.name
            for p in parameters
            if p.name not in ("X", "y") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        return RequestMethod("fit", sorted(keys)).__get__(self, type(self))(**requests)

    def get_metadata_routing(self):
        """scikit-learn's ``MetadataRequest`` of this estimator: the requests
        `set_fit_request` made, by default none (a meta-estimator given one of `fit`'s
        keyword arguments then asks for a request, as for scikit-learn's estimators)."""
        return self._get_metadata_request()

    # scikit-learn's own code, run on this class: the instance's requests, and the defaults
    # it reads from the methods' signatures (by the first two classmethods before 1.9, by
    # the third since)
    def _get_metadata_request(self):
        return _requester()._get_metadata_request(self)

    @classmethod
    def _get_default_requests(cls):
        return _requester()._get_default_requests.__func__(cls)

    @classmethod
    def _build_request_for_signature(cls, router, method):
        return _requester()._build_request_for_signature.__func__(cls, router, method)

    @classmethod
    def _get_class_level_metadata_request_values(cls, *args, **kwargs):
        method = _requester()._get_class_level_metadata_request_values.__func__
        return method(cls, *args, **kwargs)

    def __sklearn_tags__(self):
        # Only scikit-learn calls this, so it is loaded already.
        from sklearn.utils import Tags, TargetTags, TransformerTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags() if self._transformer else None,
            regressor_tags=None,
            classifier_tags=None,
        )


def _sklearn_config(key: str, default):
    """scikit-learn's setting ``key`` (``sklearn.get_config``) when scikit-learn is loaded
    (only then can it have been set), else ``default``."""
    if sys.modules.get("sklearn") is None:  # not loaded (None: blocked from loading)
        return default
    from sklearn import get_config

    return get_config().get(key, default)


def _requester():
    """scikit-learn's ``_MetadataRequester`` (only routing calls for it: it is loaded)."""
    from sklearn.utils.metadata_routing import _MetadataRequester

    return _MetadataRequester


def _parameter_repr(value) -> str:
    """A parameter's value in the repr: a numpy array (a start given as ``init=``, where
    `fit`'s is meant) as its shape and dtype (`_utils.shape_repr`), whose numbers filled the
    screen (scikit-learn cuts its repr at 700 characters); anything else its repr."""
    return shape_repr(value) if isinstance(value, np.ndarray) else repr(value)


def _is_default(value, default) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if value is default:
        return True
    if type(value) is not type(default):
        # max_iter=1000.0 or verbose=0 equal the default in value, not as a fit reads them
        # (it refuses the float): shown, as scikit-learn shows them (it compares reprs)
        return False
    try:
        return bool(np.array_equal(value, default))
    except (TypeError, ValueError):
        return False
