"""Where the shipped model lives, importable without numpy or scikit-learn, so that the
``mailsift`` command builds its parser (and runs the admin commands) without loading
the model code."""
from __future__ import annotations

import os
import pathlib

# The shipped bundle is found next to the installed package when installed editable,
# which is how the README installs it; MAILSIFT_MODEL points elsewhere.
DEFAULT_BUNDLE = pathlib.Path(
    os.environ.get("MAILSIFT_MODEL") or pathlib.Path(__file__).resolve().parent.parent / "models" / "default")
