"""A task that keeps failing ends in the dead-letter queue, not in a void."""

import json
import time

from conftest import APP_PYTHON, DEAD_LETTER_QUEUE, rabbitmq_queues, submit, wait_for_result

# Reads a queue without consuming it: every message is fetched
# unacknowledged and goes back when the connection closes. argv[1]: queue.
PEEK = """
import json
import sys
from celery_kit.app import app
found = []
with app.connection_for_read() as connection:
    channel = connection.channel()
    while True:
        message = channel.basic_get(sys.argv[1], no_ack=False)
        if message is None:
            break
        deaths = message.headers.get("x-death") or [{}]
        found.append({"id": message.headers.get("id"), "reason": deaths[0].get("reason"),
                      "queue": deaths[0].get("queue")})
print(json.dumps(found))
"""


def _dead_letters(rabbitmq):
    return rabbitmq_queues(rabbitmq)[DEAD_LETTER_QUEUE]["messages_ready"]


def test_poison_task_is_retried_then_dead_lettered(api_host, rabbitmq, group_hosts):
    before = _dead_letters(rabbitmq)
    task_id = submit(api_host, {"task": "poison"})
    reply = wait_for_result(api_host, task_id)
    assert reply["state"] == "FAILURE"
    assert "poison always fails" in reply["result"]["error"]
    deadline = time.monotonic() + 30
    while _dead_letters(rabbitmq) < before + 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert _dead_letters(rabbitmq) == before + 1

    worker = group_hosts("workers")[0]
    peeked = worker.check_output(f"{APP_PYTHON} -c %s %s", PEEK, DEAD_LETTER_QUEUE)
    dead = {letter["id"]: letter for letter in json.loads(peeked)}
    assert dead[task_id] == {"id": task_id, "reason": "rejected", "queue": "default"}
    assert _dead_letters(rabbitmq) == before + 1, "peeking must leave the dead letters in place"
