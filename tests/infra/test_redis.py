"""Redis: a user per client (the app's may not run server commands) and every write in the append-only file."""

import json
import shlex
import time
import uuid

import conftest
import pytest
from conftest import APP_PYTHON, curl_tls, redis_cli

# Run as the app on a worker host, with the app's own Redis URL (its user,
# app): what a stolen worker's credentials can do to Redis. Prints, per
# command, the error class Redis answered with, or "ok".
AS_THE_APP = """
import json, os, uuid
from celery_kit import redisurl
url = json.load(open(os.environ["CELERY_KIT_DEPLOYMENT"]))["result_backend"]
client = redisurl.connect(url, socket_timeout=5)
key = "test:acl:" + uuid.uuid4().hex
answers = {}
for command in [("SET", key, "1", "EX", "60"), ("GET", key), ("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"),
                ("SHUTDOWN", "NOSAVE"), ("REPLICAOF", "127.0.0.1", "1"), ("ACL", "LIST"), ("KEYS", "*")]:
    name = command[0]
    try:
        client.execute_command(*command)
        answers[name] = "ok"
    except Exception as error:
        answers[name] = type(error).__name__
print(json.dumps(answers))
"""


def test_without_a_user_name_redis_runs_nothing(redis_host):
    result = redis_cli(redis_host, "PING", password=False)
    assert "NOAUTH" in result.stdout + result.stderr
    assert redis_cli(redis_host, "PING").stdout.strip() == "PONG"
    assert redis_cli(redis_host, "ACL", "WHOAMI").stdout.strip() == "admin"


def test_the_apps_redis_user_works_on_data_but_may_not_flush_configure_or_shut_down(group_hosts, redis_host):
    worker = group_hosts("workers")[0]
    answers = json.loads(worker.check_output(f"{APP_PYTHON} -c {shlex.quote(AS_THE_APP)}").splitlines()[-1])
    assert (answers.pop("SET"), answers.pop("GET")) == ("ok", "ok")
    assert answers == dict.fromkeys(answers, "NoPermissionError"), answers
    # Redis still runs, with AOF on, and it logged the refusals.
    assert redis_cli(redis_host, "CONFIG", "GET", "appendonly").stdout.split() == ["appendonly", "yes"]
    refused = redis_cli(redis_host, "ACL", "LOG", "20").stdout
    assert "flushall" in refused.lower()


# Run as the app on a worker host: its settings' login to the Sentinels (its
# own user), what it may ask them and what it may not. Prints, per command,
# "ok" or the error class, and whether the settings hold a Sentinel password.
AT_THE_SENTINELS = """
import json, os
import redis
from celery_kit import redisurl
settings = json.load(open(os.environ["CELERY_KIT_DEPLOYMENT"]))
target = redisurl.parse(settings["result_backend"])
host, port = target.sentinels[0]
sentinel = redis.Redis(host=host, port=port, **redisurl.sentinel_kwargs(target))
answers = {"sentinel_password in the settings": "sentinel_password" in json.dumps(settings)}
for command in [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", target.master_name), ("SENTINEL", "MASTERS"),
                ("SENTINEL", "REPLICAS", target.master_name), ("SENTINEL", "FAILOVER", target.master_name),
                ("SENTINEL", "SET", target.master_name, "quorum", "1"), ("SENTINEL", "REMOVE", target.master_name),
                ("SENTINEL", "MONITOR", "rogue", "127.0.0.1", "6379", "1"), ("SENTINEL", "CONFIG", "GET", "*"),
                ("ACL", "LIST"), ("SHUTDOWN",), ("PUBLISH", "__sentinel__:hello", "forged")]:
    try:
        sentinel.execute_command(*command)
        answers[" ".join(command[:2])] = "ok"
    except Exception as error:
        answers[" ".join(command[:2])] = type(error).__name__
print(json.dumps(answers))
"""


def test_the_app_logs_in_to_the_sentinels_as_itself_and_may_only_ask_where_the_primary_is(group_hosts):
    if len(group_hosts("redis")) < 3:
        pytest.skip("this deployment has one Redis host: no Sentinel (REDIS_HOSTS=3)")
    sentinel_host = group_hosts("redis")[0]
    # What the clients did so far (workers, API, the kit's tools): nothing a
    # Sentinel refused. (This test's own refusals are cleared at its end.)
    refused_before = conftest.sentinel_cli(sentinel_host, "ACL", "LOG").stdout
    assert "username" not in refused_before, refused_before
    worker = group_hosts("workers")[0]
    try:
        output = worker.check_output(f"{APP_PYTHON} -c {shlex.quote(AT_THE_SENTINELS)}")
    finally:
        refused = conftest.sentinel_cli(sentinel_host, "ACL", "LOG").stdout
        conftest.sentinel_cli(sentinel_host, "ACL", "LOG", "RESET")
    answers = json.loads(output.splitlines()[-1])
    print("THE APP AT THE SENTINELS " + json.dumps(answers))
    assert answers.pop("sentinel_password in the settings") is False
    discovery = ("SENTINEL GET-MASTER-ADDR-BY-NAME", "SENTINEL MASTERS", "SENTINEL REPLICAS")
    asked = {name: answers.pop(name) for name in discovery}
    assert asked == dict.fromkeys(asked, "ok"), asked
    assert answers == dict.fromkeys(answers, "NoPermissionError"), answers
    # The Sentinels still watch the group, as they did (nothing was set or removed).
    assert "sentinel|failover" in refused, "the Sentinel logs the refusals"
    lines = conftest.sentinel_cli(sentinel_host, "SENTINEL", "MASTER", conftest.REDIS_MASTER_NAME).stdout
    watched = dict(zip(lines.split()[0::2], lines.split()[1::2], strict=True))
    assert (watched["name"], watched["quorum"]) == (conftest.REDIS_MASTER_NAME, "2"), watched


def _logged_in_users(redis_host) -> set[str]:
    return {line.split("user=")[1].split()[0] for line in redis_cli(redis_host, "CLIENT", "LIST").stdout.splitlines()}


def test_each_client_logs_in_as_its_own_user_and_nobody_as_the_default_user(group_hosts, redis_host):
    """The workers as app, the Sentinels as sentinel, the replicas as replica, the exporter as exporter."""
    default = redis_cli(redis_host, "ACL", "GETUSER", "default").stdout.split()
    assert "nopass" not in default and "passwords" in default, default
    users = _logged_in_users(redis_host)
    assert "default" not in users
    assert {"app", "admin"} <= users, users
    if len(group_hosts("redis")) >= 3:
        assert {"sentinel", "replica"} <= users, users
    if group_hosts("monitoring", required=False):
        # The exporter logs in at every scrape: redis_up is 0 when it cannot.
        address = redis_host.check_output("hostname -I").split()[0]
        scheme = "https" if conftest.TLS_CA else "http"
        metrics = redis_host.check_output(f"curl -s -m 5 {curl_tls()}{scheme}://{address}:9121/metrics")
        assert "\nredis_up 1" in metrics


def _aof_bytes(redis_host):
    return int(redis_host.check_output("cat /var/lib/redis/appendonlydir/*.incr.aof | wc -c"))


def test_writes_grow_the_append_only_file(redis_host):
    before = _aof_bytes(redis_host)
    key = f"test:aof:{uuid.uuid4().hex}"
    for index in range(20):
        redis_cli(redis_host, "SET", f"{key}:{index}", "x" * 100, db=2)
    time.sleep(1.5)  # appendfsync everysec
    after = _aof_bytes(redis_host)
    assert after >= before + 20 * 100
    redis_cli(redis_host, "DEL", *[f"{key}:{index}" for index in range(20)], db=2)
