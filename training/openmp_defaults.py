"""Importing this module applies `training.threads.configure_openmp()`: entry points import it before torch."""

from training.threads import configure_openmp


APPLIED = configure_openmp()
