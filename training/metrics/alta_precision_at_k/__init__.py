"""Makes setuptools ship the `alta_precision_at_k` metric module; evaluate loads `alta_precision_at_k.py` by path (see training/metrics)."""
