"""Loading the team's Celery app with the kit's settings.

celery_kit.app holds the loaded app: the worker units run
``celery --app celery_kit.app worker``; the producer's gunicorn loads
celery_kit.wsgi, which imports celery_kit.app first. Both name
the team's app in CELERY_KIT_APP ("package.module:attribute", the value of
kit_app_celery), and read the deployment's settings from
CELERY_KIT_DEPLOYMENT (see celery_kit.deployment).

The kit's settings go on before the app's tasks are bound, so every task
gets them; an app whose own configuration would make the kit's guarantees
false does not start (celery_kit.settings says which setting and why).
"""

from __future__ import annotations

import importlib
import os

from celery import Celery

from celery_kit import deployment as deployment_module
from celery_kit import settings as settings_module

APP_ENV = "CELERY_KIT_APP"
# Seconds a producer's AMQP socket may wait to read or write.
PRODUCER_SOCKET_TIMEOUT = 5


class AppNotFound(ImportError):
    """CELERY_KIT_APP does not name a Celery app."""


def import_app(spec: str) -> Celery:
    """The Celery app named by "module:attribute" (attribute defaults to app)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise AppNotFound(f"{APP_ENV} must name a Celery app as package.module:attribute, not {spec!r}")
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, Celery):
        raise AppNotFound(f"{spec} is not a Celery app (found {type(app).__name__})")
    return app


def configure(app: Celery, deployment: dict) -> settings_module.Outcome:
    """Apply the kit's settings; refuse (raise) when the app's own would break the guarantees."""
    outcome = settings_module.apply(app, deployment)
    if outcome.problems:
        raise settings_module.UnsafeSettings(outcome.problems)
    return outcome


def load() -> Celery:
    spec = os.environ.get(APP_ENV)
    if not spec:
        raise AppNotFound(f"{APP_ENV} is not set: it names the Celery app to run (package.module:attribute)")
    app = import_app(spec)
    configure(app, deployment_module.load())
    # Celery's current app is per thread, with an unconfigured fallback: a
    # task proxy used in a gunicorn thread would publish through it. The
    # configured app is everybody's default.
    app.set_default()
    return app


def producer_mode(app: Celery) -> None:
    """Settings of a web process that publishes tasks and reads their state.

    Workers wait for a restarting Redis before they store a result
    (result_backend_always_retry); a request must not hang: reading a state
    while Redis is down raises at once, and the web app answers 503.
    Celery's Redis result backend would also subscribe to every published
    task id (unsubscribing when its result object is collected): unbounded
    in a long-lived producer, and blocking a publish while Redis is
    unreachable. Celery keeps one backend per thread (gunicorn serves from
    threads), so every backend the app makes is built without it.
    """
    app.conf.result_backend_always_retry = False
    if (app.conf.get("celery_kit") or {}).get("broker") == "rabbitmq":
        # A broker under a memory or disk alarm stops reading from publishing
        # connections: without socket timeouts, closing such a connection
        # (after a publish whose confirm did not come) waits forever for the
        # broker's reply. Producers only; workers keep kombu's defaults.
        app.conf.broker_transport_options = {
            **(app.conf.broker_transport_options or {}),
            "read_timeout": PRODUCER_SOCKET_TIMEOUT,
            "write_timeout": PRODUCER_SOCKET_TIMEOUT,
        }
    make_backend = app._get_backend

    def backend_without_subscriptions() -> object:
        backend = make_backend()
        backend.on_task_call = lambda producer, task_id: None
        return backend

    app._get_backend = backend_without_subscriptions
