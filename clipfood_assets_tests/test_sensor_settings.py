"""The trusted-zone sensor's budget and notification queue, read from the environment."""

from clipfood_assets.settings import ClipfoodSettings


def test_the_sensor_budget_and_queue_come_from_the_environment():
    settings = ClipfoodSettings.from_env({"CLIPFOOD_SENSOR_SECONDS_PER_TICK": "1.5",
                                          "CLIPFOOD_SENSOR_OBJECTS_PER_TICK": "5000",
                                          "CLIPFOOD_SENSOR_SQS_URL": " https://sqs.eu-west-1.amazonaws.com/1/q "})
    assert (settings.sensor_seconds_per_tick, settings.sensor_objects_per_tick) == (1.5, 5000)
    assert settings.sensor_sqs_url == "https://sqs.eu-west-1.amazonaws.com/1/q"


def test_a_budget_that_is_not_positive_is_the_default():
    defaults = ClipfoodSettings.from_env({})
    assert (defaults.sensor_seconds_per_tick, defaults.sensor_objects_per_tick, defaults.sensor_sqs_url) == (
        3.0, 200_000, None)
    for seconds, objects in (("0", "0"), ("-2", "-5"), ("soon", "many"), ("inf", "1.5")):
        settings = ClipfoodSettings.from_env({"CLIPFOOD_SENSOR_SECONDS_PER_TICK": seconds,
                                              "CLIPFOOD_SENSOR_OBJECTS_PER_TICK": objects})
        assert (settings.sensor_seconds_per_tick, settings.sensor_objects_per_tick) == (3.0, 200_000)
