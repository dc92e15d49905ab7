"""make rotate-secrets under load: every password replaced, nothing refused, nothing lost, the old ones refused.

The worker host keeps a copy of the app's settings from before the rotation
(root only); the passwords never leave the hosts: a script on the worker
tries the old and the new Redis and RabbitMQ URLs and prints only whether
each logged in.
"""

import json
import shlex
import time

from conftest import APP_PYTHON, FAULT_BODIES, FAULT_RATE, Load, converge, dead_letters, fault_report

SETTINGS = "/etc/celery-app/deployment.json"
BEFORE = "/root/rotation-settings-before.json"

# Run as the app on a worker host: does each settings file's Redis URL
# (the app's user) and first RabbitMQ URL (the workers' user) log in?
LOGS_IN = """
import json, sys
import amqp, redis
from celery_kit import amqpurl, redisurl
answers = {}
for name, path in (("before", sys.argv[1]), ("after", sys.argv[2])):
    settings = json.load(open(path))
    try:
        redisurl.connect(settings["result_backend"], socket_timeout=5).ping()
        answers[name + " redis"] = "ok"
    except redis.exceptions.RedisError as error:
        answers[name + " redis"] = type(error).__name__
    if settings["broker"] == "rabbitmq":
        try:
            with amqp.Connection(**amqpurl.amqp_params(settings["broker_url"].split(";")[0])) as connection:
                connection.channel().close()
            answers[name + " rabbitmq"] = "ok"
        except Exception as error:  # refused logins come as several classes
            answers[name + " rabbitmq"] = type(error).__name__
print(json.dumps(answers))
"""


def test_rotating_every_password_under_load_refuses_and_loses_nothing(pytestconfig, group_hosts, rabbitmq, api_host):
    worker = group_hosts("workers")[0]
    worker.check_output(f"install -m 0600 {SETTINGS} {BEFORE}")
    dead_before = dead_letters(rabbitmq)
    load = Load(api_host, "rotate-secrets")
    load.start(FAULT_RATE, FAULT_BODIES)
    started = time.monotonic()
    try:
        time.sleep(5)
        converge(pytestconfig, limit="all:localhost", timeout=1800, playbook="playbooks/rotate-secrets.yml")
        seconds = time.monotonic() - started
        time.sleep(5)
    finally:
        steady = load.stop()
    report = load.wait_until_all_ran(timeout=300)
    counts = fault_report(
        f"every password rotated (make rotate-secrets, {seconds:.0f} s)",
        steady,
        report,
        dead_letters(rabbitmq) - dead_before,
    )
    try:
        answers = json.loads(
            worker.check_output(f"{APP_PYTHON} -c {shlex.quote(LOGS_IN)} {BEFORE} {SETTINGS}").splitlines()[-1]
        )
    finally:
        worker.run(f"rm -f {BEFORE}")
    print("LOGINS AFTER THE ROTATION " + json.dumps(answers))
    assert answers["after redis"] == "ok"
    assert answers["before redis"] != "ok", "Redis still takes the app's old password"
    if "after rabbitmq" in answers:
        assert answers["after rabbitmq"] == "ok"
        assert answers["before rabbitmq"] != "ok", "RabbitMQ still takes the workers' old password"
    assert counts["refused"] == 0, steady
    assert counts["lost"] == 0, report
    assert counts["dead_lettered"] == 0
