"""Package marker: setuptools ships `alta_precision_at_k.py`, loaded by evaluate by path."""
