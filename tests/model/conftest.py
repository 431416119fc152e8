"""A small stacked categorizer (TF-IDF + fusion network + combiner) trained on a synthetic catalog
(package scope: trained once, ~30 s on CPU)."""
from __future__ import annotations

import pytest

from tests.conftest import train_tiny_stack


@pytest.fixture(scope="package")
def trained(tmp_path_factory):
    return train_tiny_stack(tmp_path_factory.mktemp("trained"))
