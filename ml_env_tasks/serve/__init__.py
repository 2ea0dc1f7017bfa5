"""Serving a model as Azure ML does: the scoring server that runs inside images (``server``, the
``score.py`` contract), a service on the engine with its HTTP front (``local``, ``front``), a small
client, and smoke tests with their cases, checks and reports (``smoke``)."""
