"""Closeness of network outputs, for the tests that compare with a reference."""

import numpy as np


def assert_close_to_scale(actual, expected, name, rtol=1e-4):
  """Elementwise closeness with an absolute floor scaled to the output.

  An output that is (nearly) all zeros would make any comparison pass, so it
  fails instead.
  """
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  scale = float(np.max(np.abs(expected)))
  assert scale > 1e-3, f'{name} is (nearly) all zeros; the test is void'
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale,
                             err_msg=name)
