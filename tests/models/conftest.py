"""Every model test module runs with megatron on one CPU process (TP=PP=1); multi-rank tests spawn
their own ranks (multirank.py)."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def _megatron(megatron_single_rank):
    """Sets up tests/conftest.py's ``megatron_single_rank`` for each module here."""
