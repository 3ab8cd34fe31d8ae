"""Package marker: setuptools ships `alta_zero_shot_accuracy.py`, loaded by evaluate by path."""
