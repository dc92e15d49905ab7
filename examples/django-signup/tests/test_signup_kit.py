"""The example under the kit, as the hosts run it: each step in a fresh process, like the deploy.

The deployment here has the queues of celery-kit.yml, an in-memory broker and
result store (no services needed), and the pools' time limit (60 s).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from signup_environment import EXAMPLE, KIT, data_files

from celery_kit.deployment import HEALTH_QUEUE


@pytest.fixture
def host_env(tmp_path):
    """The environment of the app's processes on a host: celery-kit.yml's, a secret, the kit's variables."""
    deployment = {
        "broker": "rabbitmq",
        "broker_url": "memory://",
        "result_backend": "cache+memory://",
        "queues": [
            HEALTH_QUEUE,
            {"name": "email", "type": "quorum", "exchange": "tasks"},
            {"name": "analytics", "type": "quorum", "exchange": "tasks"},
        ],
        "default_queue": "email",
        "task_time_limit": 60,
    }
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CELERY", "DJANGO", "SIGNUP"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(KIT)]),
            "DJANGO_SETTINGS_MODULE": "signup.settings",
            "DJANGO_ALLOWED_HOSTS": "*",
            "DJANGO_SECRET_KEY": "a-secret-generated-per-deployment",
            **data_files(tmp_path),
            "CELERY_KIT_DEPLOYMENT": str(tmp_path / "deployment.json"),
            "CELERY_KIT_APP": "signup.celery:app",
            "CELERY_KIT_WSGI": "signup.wsgi:application",
        }
    )
    return env


def run(env, *argv, cwd):
    return subprocess.run(
        [sys.executable, *argv], check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_settings_refuse_to_start_without_a_secret_key(host_env, tmp_path):
    del host_env["DJANGO_SECRET_KEY"]

    done = run(host_env, "-m", "django", "check", cwd=tmp_path)

    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in done.stderr


def test_the_kits_check_accepts_the_app(host_env, tmp_path):
    # What the deploy runs on every host before any process restarts.
    check = "import sys; from celery_kit import check; sys.exit(check.main(sys.argv[1:]))"

    done = run(host_env, "-c", check, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["refused"] == []
    assert {"users.tasks.send_welcome_email", "users.tasks.track_signup"} <= set(report["tasks"])


def test_setup_command_then_the_producer_serves_a_signup(host_env, tmp_path):
    # kit_app_setup_commands, as the api hosts run it.
    migrate = run(host_env, "-m", "django", "migrate", "--noinput", cwd=tmp_path)
    assert migrate.returncode == 0, migrate.stderr
    assert Path(host_env["SIGNUP_DATABASE"]).exists()

    # gunicorn's view of the producer: celery_kit.wsgi:application, called
    # once for /healthz and once for /signup.
    script = textwrap.dedent(
        """
        import io, json, wsgiref.util
        from celery_kit.wsgi import application, celery_app

        def call(method, path, body=b""):
            environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_TYPE": "application/json",
                       "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "HTTP_HOST": "10.0.0.5"}
            wsgiref.util.setup_testing_defaults(environ)
            status = []
            chunks = application(environ, lambda line, headers, exc_info=None: status.append(line))
            return {"status": status[0], "body": json.loads(b"".join(chunks))}

        body = json.dumps({"username": "alice", "email": "alice@example.com", "password": "correct horse"})
        print(json.dumps({
            "healthz": call("GET", "/healthz"),
            "signup": call("POST", "/signup", body.encode()),
            "acks_late": celery_app.conf.task_acks_late,
            "always_retry": celery_app.conf.result_backend_always_retry,
            "queue": celery_app.amqp.router.route({}, "users.tasks.track_signup")["queue"].name,
        }))
        """
    )
    done = run(host_env, "-c", script, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["healthz"] == {"status": "200 OK", "body": {"status": "ok"}}
    assert seen["signup"]["status"] == "201 Created"
    assert seen["signup"]["body"]["user"] == "alice"
    # The kit's settings are on the app the web process publishes through...
    assert seen["acks_late"] is True
    assert seen["queue"] == "analytics"
    # ...except that a web request does not wait for Redis (signup.wsgi).
    assert seen["always_retry"] is False
