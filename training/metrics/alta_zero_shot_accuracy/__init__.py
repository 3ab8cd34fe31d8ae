"""Makes setuptools ship the `alta_zero_shot_accuracy` metric module; evaluate loads `alta_zero_shot_accuracy.py` by path (see training/metrics)."""
