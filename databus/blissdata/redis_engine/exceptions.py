"""Old path of blissdata's exceptions, kept as blissdata 2.x keeps it: use
``databus.blissdata.exceptions``."""

import warnings

from ..exceptions import *  # noqa: F403
from ..exceptions import __all__  # noqa: F401

warnings.warn(
    "'databus.blissdata.redis_engine.exceptions' is deprecated, "
    "use 'databus.blissdata.exceptions' instead.",
    FutureWarning,
    stacklevel=2,
)
