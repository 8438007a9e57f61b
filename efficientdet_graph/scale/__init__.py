"""Stage 6: compound scaling. φ → input size, backbone, widths, depths (EfficientDet §4.2).

``efficientdet_graph.scale`` is both this package and the public function
``scale(phi)``: Python binds a package's attribute to its subpackage whenever the
subpackage is imported, so the function and the package cannot both own the name.
The package is callable instead, ``efficientdet_graph.scale(0)`` is ``scale(0)``,
whichever import came first.
"""

import sys
import types

from .scaler import EFFICIENTDET_TABLE, ScaledConfig, family, resolve, scale

__all__ = ["EFFICIENTDET_TABLE", "ScaledConfig", "family", "resolve", "scale"]


class _CallableModule(types.ModuleType):
    def __call__(self, phi: int | str) -> ScaledConfig:
        return scale(phi)


sys.modules[__name__].__class__ = _CallableModule
