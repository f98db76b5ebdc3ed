"""The request: communication identifiers, the validated transfer request, and building a job from it."""
