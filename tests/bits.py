"""Bitwise comparison with a useful failure message: the installed refspec.testing helpers."""
from refspec.testing.bits import assert_bits_equal, ulp_distance  # noqa: F401
