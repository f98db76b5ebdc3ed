"""Producing jobs: the producer API, replays, campaigns (files, submit, reports) and how a job is shown."""
