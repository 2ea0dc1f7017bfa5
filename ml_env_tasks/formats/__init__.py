"""Azure ML's formats, in and out: v1 environment directories and JSON, v2 environment YAML, conda
and requirements files (``azure``), v2 command jobs as ``ml-env train`` invocations
(``azure_job``), and the export of an environment file back to v1 or v2 (``azure_export``)."""
