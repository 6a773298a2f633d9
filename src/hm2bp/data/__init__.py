"""Datasets. Each loader returns pixel intensities in [0, 255] (static images) or spike trains, plus labels."""
