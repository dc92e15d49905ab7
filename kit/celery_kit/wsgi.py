"""The producer's WSGI entry point under gunicorn: the team's WSGI app, its Celery app configured first.

CELERY_KIT_WSGI names the team's WSGI callable ("package.module:attribute",
the value of kit_app_wsgi). celery_kit.app is loaded first, so the Celery app the
web app publishes through has the deployment's broker, publisher confirms
and queues before the first request, and the producer's settings
(celery_kit.boot.producer_mode: no hang while Redis is down, no result
subscriptions). The app answers behind the kit's gate: a token on every
request but the public paths, and per-token limits (celery_kit.apigate).
"""

from __future__ import annotations

import importlib
import os

from celery_kit import apigate
from celery_kit.app import app as celery_app
from celery_kit.boot import producer_mode

WSGI_ENV = "CELERY_KIT_WSGI"
__all__ = ["application", "celery_app"]


def load_wsgi(spec: str) -> object:
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute or "application")


producer_mode(celery_app)
# Behind the kit's gate (tokens, limits: celery_kit.apigate), whatever the app.
application = apigate.wrap(load_wsgi(os.environ.get(WSGI_ENV) or ""), celery_app.conf.celery_kit)
