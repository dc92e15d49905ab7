"""The tasks: where they are routed, how the welcome email survives a broken mail transport."""

import json
import os
import subprocess
import sys
import textwrap
import threading

from celery import current_app
from django.core.exceptions import ImproperlyConfigured

from signup.celery import app as celery_app
from users import tasks


def queue_of(task_name):
    return celery_app.amqp.router.route({}, task_name)["queue"].name


def test_each_task_goes_to_its_queue():
    assert queue_of("users.tasks.send_welcome_email") == "email"
    assert queue_of("users.tasks.track_signup") == "analytics"
    # A task no route names goes to the default queue.
    assert queue_of("users.tasks.something_else") == "email"


def test_the_welcome_email_uses_the_kits_at_most_once_guard():
    from celery_kit.guard import AtMostOnceTask  # noqa: PLC0415

    assert isinstance(celery_app.tasks["users.tasks.send_welcome_email"], AtMostOnceTask)
    assert not isinstance(celery_app.tasks["users.tasks.track_signup"], AtMostOnceTask)


def test_tasks_resolve_to_the_project_app_in_any_thread():
    # gunicorn serves requests from threads; a shared_task must publish
    # through the configured app there too, not Celery's fallback app.
    seen = []
    thread = threading.Thread(target=lambda: seen.append((current_app.main, tasks.track_signup.app)))
    thread.start()
    thread.join()

    assert seen == [("signup", celery_app)]


def test_the_project_app_is_the_default_even_after_celery_made_its_fallback():
    # In a fresh process: something touched celery.current_app before the
    # project was imported, which creates Celery's unconfigured fallback app.
    script = textwrap.dedent(
        """
        import threading
        from celery import current_app
        current_app.main
        import signup.celery
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_app.main))
        thread.start()
        thread.join()
        print(seen[0])
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "signup"


def count_calls(monkeypatch, fail_first=0, error=OSError):
    """Wrap the task's send_mail: count its calls, the first fail_first of them failing with error."""
    calls = []
    real_send_mail = tasks.send_mail

    def send_mail(*args, **kwargs):
        calls.append(kwargs["recipient_list"])
        if len(calls) <= fail_first:
            raise error("mail transport down")
        return real_send_mail(*args, **kwargs)

    monkeypatch.setattr(tasks, "send_mail", send_mail)
    return calls


def test_an_unwritable_mail_dir_is_retried_then_fails_and_a_replay_sends(
    monkeypatch, settings_override, tasks_fail_quietly, tmp_path
):
    # As root, a chmod 000 directory still passes os.access; a regular file
    # where the directory should be makes the file backend refuse the same way
    # (ImproperlyConfigured), as an unwritable directory does for the app user.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings_override("EMAIL_FILE_PATH", str(blocker))
    calls = count_calls(monkeypatch)

    result = tasks.send_welcome_email.apply(args=("alice", "alice@example.com"), task_id="welcome-1")

    assert result.state == "FAILURE"
    assert isinstance(result.result, ImproperlyConfigured)
    assert len(calls) == 3  # the first try and max_retries=2 retries

    # The operator fixes the transport and replays the dead-lettered message:
    # the same task id and arguments.
    mail_dir = tmp_path / "mail"
    settings_override("EMAIL_FILE_PATH", str(mail_dir))

    replay = tasks.send_welcome_email.apply(args=("alice", "alice@example.com"), task_id="welcome-1")

    assert replay.state == "SUCCESS"
    assert replay.result == {"sent_to": "alice@example.com"}
    [message] = mail_dir.glob("*.log")
    assert "To: alice@example.com" in message.read_text()


def test_a_transient_transport_error_is_retried_and_the_email_sent(monkeypatch, tasks_fail_quietly, mail_dir):
    calls = count_calls(monkeypatch, fail_first=1)

    result = tasks.send_welcome_email.apply(args=("bob", "bob@example.com"))

    assert result.state == "SUCCESS"
    assert len(calls) == 2
    assert len(list(mail_dir.glob("*.log"))) == 1


def test_other_errors_are_not_retried(monkeypatch, tasks_fail_quietly):
    calls = count_calls(monkeypatch, fail_first=1, error=ValueError)

    result = tasks.send_welcome_email.apply(args=("bob", "bob@example.com"))

    assert result.state == "FAILURE"
    assert len(calls) == 1


def test_track_signup_appends_one_json_line_per_call(analytics_file):
    first = tasks.track_signup.apply(args=("alice",), task_id="t-1")
    tasks.track_signup.apply(args=("bob",), task_id="t-2")

    assert first.result == {"recorded": "alice"}
    events = [json.loads(line) for line in analytics_file.read_text().splitlines()]
    assert [(event["username"], event["task_id"]) for event in events] == [("alice", "t-1"), ("bob", "t-2")]
    assert all(event["event"] == "signup" and event["at"].endswith("+00:00") for event in events)
