"""Moved to :mod:`minivit.parallel.distributed`; this name keeps existing imports working.

``import minivit.distributed`` gives the very module ``minivit.parallel.distributed`` (not a copy),
so its functions, classes and settings are the same objects under both names.
"""

import sys

from minivit.parallel import distributed as _moved

sys.modules[__name__] = _moved
