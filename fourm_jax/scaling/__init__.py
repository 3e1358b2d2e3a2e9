"""Scaling studies: FLOP accounting, hardware peaks and MFU, scaling-law fits and reports."""
