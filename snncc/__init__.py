"""snncc: compile a trained ONNX CNN into an ultra-low-latency spiking neural network."""
import os as _os

__version__ = "0.1.0"

# In a source checkout, snncc.passes and snncc.runtime are the top-level passes/ and runtime/
# folders (pyproject's package-dir; an editable install maps them). Python started in the checkout
# finds this snncc/ first, also where snncc is installed the regular way or editable from another
# checkout, and that mapping is then out of reach or someone else's: the checkout's own folders
# serve instead (a second clone had run the first one's passes and kernel library).
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "passes")) and \
        _os.path.isfile(_os.path.join(_ROOT, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_ROOT, "passes", "__init__.py")):
    import importlib.util as _util

    _spec = _util.find_spec(__name__ + ".passes")
    if _spec is None or not _os.path.abspath(_spec.origin or "").startswith(_ROOT + _os.sep):
        __path__.append(_ROOT)
