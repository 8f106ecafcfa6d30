"""Benchmark drivers and their result files (``bench/results/``).

This package imports the product (``serve``, ``actors``, ``learner``, ``simulators``, ``reverie``); the product
never imports it.  ``reverie bench ...`` and ``reverie learn`` are its commands (``bench/commands.py``)."""
