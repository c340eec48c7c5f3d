"""Imported at start-up by every Python process of the sanitizer run (``tests/asan/run.sh`` puts
this directory on ``PYTHONPATH``, child processes of the tests included): resolves
``specdecode._C`` to the sanitizer build named by ``SPECDECODE_C_EXTENSION`` instead of the
extension in the tree. Without that variable it does nothing."""

import importlib.machinery
import importlib.util
import os
import sys

_EXTENSION = os.environ.get("SPECDECODE_C_EXTENSION")


class _SanitizerBuildFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "specdecode._C":
            return None
        loader = importlib.machinery.ExtensionFileLoader(name, _EXTENSION)
        return importlib.util.spec_from_file_location(name, _EXTENSION, loader=loader)


if _EXTENSION:
    sys.meta_path.insert(0, _SanitizerBuildFinder)
