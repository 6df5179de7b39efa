"""Shared fixtures."""
import gin
import pytest

from flip_t5x.data import preprocessors


@pytest.fixture
def clean_gin_and_counters():
  """A clean gin config and zeroed skip counters around a test that binds its own data settings."""
  gin.clear_config()
  preprocessors.reset_counts()
  yield
  gin.clear_config()
