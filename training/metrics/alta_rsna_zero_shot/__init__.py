"""Makes setuptools ship the `alta_rsna_zero_shot` metric module; evaluate loads `alta_rsna_zero_shot.py` by path (see training/metrics)."""
