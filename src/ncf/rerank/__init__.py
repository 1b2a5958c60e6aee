"""Business-aware re-ranking: slates under global revenue / category-share / coverage
constraints, by Lagrangian relaxation.

- :mod:`ncf.rerank.attributes`  item attributes CSV joined by raw item id; MovieLens demo table
- :mod:`ncf.rerank.constraints` ``revenue>=4.5``, ``category:Drama<=0.3``, ``coverage>=500`` ...
- :mod:`ncf.rerank.lagrangian`  the solver (dual ascent) and :class:`PerRequestReranker` for serving
- :mod:`ncf.rerank.offline`     a run directory end to end (relevance matrix, HR/NDCG of the slates)
"""
