"""Delivery, the worker side: the thin Celery task, a message decoded into a job, the per-process runtime, the
send loop, pacing, the sweeper, and the consumer that records poison messages."""
