"""OneSearch-Ray: end-to-end generative e-commerce search.

The library follows the pipeline of the paper, one subpackage a stage:
``data`` -> ``khqe`` -> ``behavior`` -> ``prompts`` -> ``model`` -> ``train`` -> ``decoding`` -> ``eval``.
Nothing here imports Ray; the Ray shells live in ``pipelines/``, ``tuning/`` and ``serve_apps/``.
"""

__version__ = "0.1.0"
