"""The HTTP read API: ``GET /functions/v1/get-schedule`` for the technician portal.

Modules: ``app`` (routes, ``create_app``), ``service`` (the cached read path),
``fastpath`` (warm requests answered from the caches), ``conditional`` (dates,
ETags, cache headers), ``auth`` (token verification), ``tokens`` (``opsdash
token``), ``errors`` (the one exception handler), ``models`` (response schemas),
``cache``, ``metrics``, ``observe`` (access log) and ``server`` (``opsdash
--serve``). Nothing here imports Textual.
"""
