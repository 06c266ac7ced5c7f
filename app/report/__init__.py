"""Reports and comparisons of stored runs: tables, charts and files people put in a README.

Loading (``data.py``, ``compare.py``'s ``load_comparison``) is the only part that touches the
database; every builder takes those results and returns rich renderables or strings, so the
dashboard's run-detail screen can reuse them.
"""
