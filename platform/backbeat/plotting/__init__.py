"""Plotting: BEAT plotters run on analyzer results, in block processes (``render``).

May import: every layer below (``core`` … ``audit``).
"""
