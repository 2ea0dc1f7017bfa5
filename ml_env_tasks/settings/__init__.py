"""Settings: every option declared once (``options``: flag, environment variable, config key,
action input, type, default, help) and the config files that can give them (``files``: the
project's ``[tool.ml-env]``, the user's and the machine's, with what each layer may set)."""
