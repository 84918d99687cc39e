from __future__ import annotations

import pytest

from tests.search_helpers import small_splits
from trainflow.data.dataset import SplitData


@pytest.fixture(scope="module")
def splits() -> tuple[SplitData, SplitData]:
    return small_splits()
