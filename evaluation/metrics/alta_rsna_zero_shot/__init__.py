"""Package marker: setuptools ships `alta_rsna_zero_shot.py`, loaded by evaluate by path."""
