"""scikit-learn's estimator checks (`parametrize_with_checks`) on vbsnmf's estimators.

Every check of scikit-learn 1.9 runs on `VBNMF` and `vbsnmf.NMF`. A check that is
expected to fail is listed in ``EXPECTED_FAILED`` with its reason (pytest reports it as
xfail, never as a silent skip). One check needs the environment variable
``SCIPY_ARRAY_API=1`` set before SciPy is first imported (scikit-learn skips it
otherwise); it runs in a fresh interpreter with that variable set.

`VBNMF` duck-types the contract (`vbsnmf._base.Estimator`, no import of scikit-learn) and
passes the same checks as when it inherited ``BaseEstimator``.

`VBNMF` is configured to converge tightly (``tol=1e-7``): the check that
``fit_transform(X)`` equals ``transform(X)`` to 1e-2 holds for a converged fit, where
the joint posterior of the rows and the rows' posterior given the fitted columns agree.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import vbsnmf

pytestmark = [
    # scikit-learn's checks feed real-valued data and stop some fits early, by design.
    pytest.mark.filterwarnings("ignore::vbsnmf.NonCountWarning"),
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

ESTIMATORS = [
    # One thread: these are tiny fits, where thread launches would cost more than the work.
    vbsnmf.VBNMF(
        n_components=2, max_iter=2000, tol=1e-7, random_state=0, n_threads=1, prior="gamma"
    ),
    vbsnmf.NMF(n_components=2, random_state=0),
]

EXPECTED_FAILED: dict[str, dict[str, str]] = {"VBNMF": {}, "NMF": {}}

_ARRAY_API_SCRIPT = """
import pickle, sys, warnings
warnings.simplefilter("ignore")
from sklearn.utils.estimator_checks import check_array_api_input
estimator = pickle.loads(sys.stdin.buffer.read())
check_array_api_input(
    type(estimator).__name__, estimator, array_namespace="numpy",
    expect_only_array_outputs=False,
)
print("passed")
"""


def _check_name(check) -> str:
    while isinstance(check, functools.partial):
        check = check.func
    return check.__name__


def _expected_failed(estimator) -> dict[str, str]:
    return EXPECTED_FAILED[type(estimator).__name__]


with warnings.catch_warnings():
    # scikit-learn warns that VBNMF does not inherit BaseEstimator: it implements the
    # contract itself (vbsnmf/_base.py: importing scikit-learn costs 1.3 s and 90 MiB),
    # and every check below runs on it all the same.
    warnings.filterwarnings("ignore", "Estimator VBNMF does not inherit", UserWarning)
    _with_checks = parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed)


@_with_checks
def test_sklearn_estimator_checks(estimator, check):
    if _check_name(check) == "check_array_api_input":
        env = dict(os.environ, SCIPY_ARRAY_API="1")
        completed = subprocess.run(
            [sys.executable, "-c", _ARRAY_API_SCRIPT],
            input=pickle.dumps(estimator),
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr.decode()[-2000:]
        assert completed.stdout.decode().strip().endswith("passed")
    else:
        check(estimator)


def test_checks_cover_the_non_negative_contract():
    """The tags that make scikit-learn feed only non-negative (and sparse) data are set,
    and negative input fails with scikit-learn's phrase and vbsnmf's location."""
    tags = ESTIMATORS[0].__sklearn_tags__()
    assert tags.input_tags.positive_only and tags.input_tags.sparse
    X = np.ones((4, 3))
    X[1, 2] = -3
    with pytest.raises(ValueError, match=r"Negative values in data.*\(1, 2\)"):
        vbsnmf.VBNMF(1, prior="gamma").fit(X)
