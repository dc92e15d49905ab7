"""The app a worker or a producer runs: the team's Celery app, configured by the kit.

``celery --app celery_kit.app worker`` (the worker units) and
celery_kit.wsgi (the producer) import it; see celery_kit.boot.
"""

from celery_kit.boot import load

app = load()
