"""Ray Tune sweeps: ``sweep`` (the Tune shell of ``onesearch tune``), ``space`` (the layout search
space), ``results`` (the results table and the best config). The scoring logic is
``onesearch_ray.khqe.proxies`` and the library's training and evaluation."""
