"""Report statistics against scipy: the regularised incomplete beta, Student-t p-values, and the
paired comparison across folds (scipy.stats.ttest_rel)."""

import numpy as np
import pytest
from scipy import special, stats

from jkd import report


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (2.0, 0.5, 0.9), (4.0, 0.5, 0.05),
                                   (40.0, 0.5, 0.97), (1.5, 3.0, 0.5)])
def test_betainc_matches_scipy(a, b, x):
  np.testing.assert_allclose(report.betainc(a, b, x), special.betainc(a, b, x), rtol=1e-10)


def test_paired_test_matches_ttest_rel():
  r = np.random.default_rng(1)
  for n in (2, 3, 9, 27):
    a = r.uniform(0.6, 0.9, n)
    b = a + r.normal(0.01, 0.03, n)
    got = report.paired_test(a, b)
    want = stats.ttest_rel(b, a)
    np.testing.assert_allclose(got["t"], want.statistic, rtol=1e-10)
    np.testing.assert_allclose(got["p"], want.pvalue, rtol=1e-8)
    np.testing.assert_allclose(got["std"], np.std(b - a, ddof=1), rtol=1e-12)
  assert np.isnan(report.paired_test(np.array([0.5]), np.array([0.6]))["p"])
