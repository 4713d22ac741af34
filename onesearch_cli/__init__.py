"""The ``onesearch`` command: the face above the Ray jobs (``pipelines/``), the sweeps (``tuning/``),
the API (``serve_apps/``) and the demo page (``demo/``); ``python -m onesearch_cli`` runs it too."""
