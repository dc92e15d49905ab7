"""celery-kit drain's reading of the workers' answers (the drain itself runs
against real workers in tests/infra/test_delivery.py)."""

from celery_kit import drain


class _Control:
    """Answers as Celery's control API would, from a script of replies."""

    def __init__(self, queues, polls):
        self.queues = queues
        self.polls = list(polls)
        self.cancelled = []

    def inspect(self, destination, timeout):
        control = self

        class _Inspect:
            def active_queues(self):
                return control.queues

            def active(self):
                return control.polls[0][0]

            def reserved(self):
                return control.polls.pop(0)[1]

        return _Inspect()

    def cancel_consumer(self, queue, destination, reply, timeout):
        self.cancelled.append((queue, destination[0]))


class _App:
    def __init__(self, control):
        self.control = control


def test_a_bare_name_gets_this_hosts_name():
    assert drain.node_names(["default-1", "io-2@other"], host="w1") == ["default-1@w1", "io-2@other"]


def test_tasks_held_are_active_and_reserved_and_a_silent_node_is_none():
    counts = drain.holding({"a@h": [{}], "b@h": []}, {"a@h": [{}, {}], "b@h": []}, ["a@h", "b@h", "c@h"])
    assert counts == {"a@h": 3, "b@h": 0, "c@h": None}


def test_the_node_stops_consuming_every_queue_then_is_waited_for_until_it_holds_nothing():
    control = _Control(
        {"default-1@h": [{"name": "default"}, {"name": "health"}]},
        [({"default-1@h": [{}]}, {"default-1@h": [{}]}), ({"default-1@h": []}, {"default-1@h": []})],
    )
    outcome = drain.drain(_App(control), ["default-1@h"], timeout=10, interval=0)
    assert control.cancelled == [("default", "default-1@h"), ("health", "default-1@h")]
    assert (outcome["drained"], outcome["held_at_first"]) == (True, {"default-1@h": 2})
    assert control.polls == []


def test_a_node_that_does_not_answer_is_not_waited_for():
    control = _Control({}, [])
    outcome = drain.drain(_App(control), ["default-1@h"], timeout=10, interval=0)
    assert (outcome["drained"], outcome["not_answering"], control.cancelled) == (False, ["default-1@h"], [])


def test_a_node_still_busy_at_the_timeout_is_reported_not_failed():
    busy = ({"default-1@h": [{}]}, {"default-1@h": []})
    control = _Control({"default-1@h": [{"name": "default"}]}, [busy] * 50)
    outcome = drain.drain(_App(control), ["default-1@h"], timeout=0.01, interval=0.01)
    assert (outcome["drained"], outcome["still_holding"]) == (False, {"default-1@h": 1})


def test_an_unreachable_broker_is_reported_not_raised():
    class _Down:
        def inspect(self, destination, timeout):
            raise ConnectionRefusedError(111, "Connection refused")

    outcome = drain.drain(_App(_Down()), ["default-1@h"], timeout=10)
    assert outcome["drained"] is False
    assert outcome["error"].startswith("ConnectionRefusedError")
