"""A retrace of the search step after its first trace is logged (it costs a first step)."""
from __future__ import annotations

import logging

from tests.search import models_under_test


def test_retrace_after_the_first_step_warns(caplog):
    model = models_under_test.stand_in_search_model("lpt")
    model.make_train_function()
    batches = iter(models_under_test.search_dataset(1, batch=2))
    smaller = iter(models_under_test.search_dataset(1, batch=1))
    with caplog.at_level(logging.WARNING):
        model.train_function([next(batches)])
        assert "traced again" not in caplog.text
        model.train_function([next(smaller)])  # another batch size: a second trace
    assert model.traces_since_build == 2
    assert "traced again" in caplog.text
