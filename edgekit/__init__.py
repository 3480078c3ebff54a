"""edgekit: distil, compress, export and benchmark models for edge devices.

Importing the package is lean: nothing here imports torch. Heavy work lives in
sub-packages that are imported only by the commands that need them.
"""

__version__ = "0.1.0"

from edgekit.errors import EdgekitError

__all__ = ["EdgekitError", "__version__"]
