"""Flower-free core of RobustFL: config, models, data, attacks, training and evaluation.

Nothing in this package imports flwr or ray, so all of it can be used and tested on its own.
"""
