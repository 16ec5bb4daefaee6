"""The vocabulary every stage shares, and nothing that runs a benchmark.

Specs and their validation (``spec``), episodes and the datasets behind them (``episodes``,
``data``), the canonical models and initial weights (``models``, ``flops``), the algorithms
(``algorithms``), the frameworks (``frameworks``), the adapter contract and the registry of
adapters (``adapter``, ``registry``), budget profiles, cells, statistics, atomic writes and
errors. It imports no other ``bench`` package and no deep-learning framework.
"""
