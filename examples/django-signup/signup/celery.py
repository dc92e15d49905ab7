"""The project's Celery app (kit_app_celery: signup.celery:app).

Configuration comes from the Django settings, every key prefixed CELERY_
(see the Celery section of signup.settings); the tasks are found in each
installed app's tasks module. Under the kit, celery_kit.boot imports this app
and applies the deployment's settings on top (broker, queues, late acks,
publisher confirms, dead-lettering) before any task is bound.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signup.settings")

app = Celery("signup")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A shared_task resolves to Celery's *current* app, which is kept per thread:
# in another thread than the one that created this app (gunicorn serves
# requests from threads) it is Celery's default app. Celery's Django fixup
# makes this app the default only if there is none yet; anything that touched
# celery.current_app earlier has already created an unconfigured fallback,
# which would then publish to the wrong broker. So make it the default here.
app.set_default()
