"""The sample's Celery app: a plain Celery app, as a team's own would be.

It sets only what is the app's business (which queue a task goes to). Where
the broker is, the queues the broker declares, and the delivery guarantees
(late acks, publisher confirms, dead-lettering) are the kit's:
celery_kit.boot applies them when a worker or the API starts.
"""

from __future__ import annotations

from celery import Celery


def create_app() -> Celery:
    celery_app = Celery("taskapp")
    celery_app.conf.task_routes = {"send_welcome_email": {"queue": "emails"}}
    celery_app.autodiscover_tasks(["taskapp"], related_name="tasks", force=True)
    return celery_app


app = create_app()
