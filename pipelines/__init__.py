"""Ray shells around the library: each module is one job runnable with ``python -m`` or ``ray job submit``."""
