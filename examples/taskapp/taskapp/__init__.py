"""Sample Celery application: tasks, their configuration and an HTTP API."""
