"""The starter files: each is copied, as it is, into the learner's folder by
``python -m minivit.exercises start NAME``. Each stands alone (plain NumPy):
``forward`` is given, ``backward`` is a stub under its derivation table. The
grader also imports them: their ``forward`` is the function the finite
differences are taken of.
"""
