"""The latency band of EpochSchedule steers the derived network's latency by default, the
supernet's expectation (FasterSeg's rule) with --latency_target_of=supernet."""
import dataclasses
import types

import keras
import pytest

from lbt_tf.config import SearchConfig
from lbt_tf.search.callbacks import EpochSchedule


def _schedule(target_of, expected_ms, derived_ms):
    cfg = SearchConfig(warmup_epochs=0, latency_weight=0.1, adaptive_latency=True,
                       latency_target_min_ms=90.0, latency_target_max_ms=110.0,
                       latency_target_of=target_of)
    model = types.SimpleNamespace(latency_weight=keras.Variable(0.1, trainable=False),
                                  teacher_learner=types.SimpleNamespace(arch_values=list))
    schedule = EpochSchedule(cfg, latency_fn=lambda arch: expected_ms,
                             derived_latency_fn=lambda: derived_ms)
    schedule.set_model(model)
    return schedule, model


@pytest.mark.parametrize("target_of, expected_weight", [("derived", 0.05), ("supernet", 0.2)])
def test_band_steers_the_chosen_latency(target_of, expected_weight):
    # The supernet's expectation is above the band, the derived network below it: the two
    # rules move the latency weight in opposite directions.
    schedule, model = _schedule(target_of, expected_ms=150.0, derived_ms=70.0)
    logs = {}
    schedule.on_epoch_end(0, logs)
    assert float(model.latency_weight.numpy()) == pytest.approx(expected_weight)
    assert logs["expected_latency_ms"] == 150.0 and logs["derived_latency_ms"] == 70.0


def test_inside_the_band_keeps_the_weight():
    schedule, model = _schedule("derived", expected_ms=150.0, derived_ms=100.0)
    schedule.on_epoch_end(0, {})
    assert float(model.latency_weight.numpy()) == pytest.approx(0.1)


def test_unknown_target_is_a_config_error():
    from lbt_tf import config as config_lib
    bad = dataclasses.replace(config_lib.Config(), search=SearchConfig(latency_target_of="net"))
    with pytest.raises(config_lib.ConfigError, match="--latency_target_of"):
        config_lib.validate(bad)
