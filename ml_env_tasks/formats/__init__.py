"""Azure ML's formats, in and out: v1 environment directories and JSON, v2 environment YAML, conda
and requirements files (``azure``), v2 command jobs as ``ml-env train`` invocations
(``azure_job``), online deployments and inference configs as an environment plus the ``serve``,
``smoke-test`` and ``package`` commands (``azure_deploy``), and the export of an environment file
back to v1 or v2 (``azure_export``). ``azure_fields`` holds every format's fields and what becomes
of each (carried, refused or warned); ``azure_common`` what the importers share."""
