"""WSGI entry point (kit_app_wsgi: signup.wsgi:application).

Under the kit, gunicorn loads celery_kit.wsgi, which configures the Celery app
first and then imports this module.
"""

import os

from django.core.wsgi import get_wsgi_application

from signup.celery import app as celery_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signup.settings")

application = get_wsgi_application()

# A worker waits for a restarting Redis before it stores a result (the kit
# sets result_backend_always_retry, with no retry limit); a web request must
# not: GET /tasks/<id> answers 503 at once instead. Set here, in the web
# process only, before its first request builds a result backend.
celery_app.conf.result_backend_always_retry = False
