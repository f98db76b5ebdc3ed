"""The message queue: the Celery app and its configuration, publishing job messages one at a time or in bulk."""
