"""Moved to :mod:`minivit.parallel.replicas`; this name keeps existing imports working.

``import minivit.replicas`` gives the very module ``minivit.parallel.replicas`` (not a copy),
so its functions, classes and settings are the same objects under both names.
"""

import sys

from minivit.parallel import replicas as _moved

sys.modules[__name__] = _moved
