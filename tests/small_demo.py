"""``python tests/small_demo.py demo …``: the real command line, with the demo's data made small (10 subjects,
3 cells each, 48 px, input 32 px) so the fault suite can kill and rerun it in seconds. Not a test module.

The command line starts exactly as the console script does (``fusionfeat.__main__.run``, signal handling
first); only when ``fusionfeat.demo`` is imported are its size defaults replaced.
"""

from __future__ import annotations

import importlib.abc
import sys

SMALL = (5, 5, 3, 48, 32)  # subjects_all, subjects_hem, cells_per_subject, image_size, input_size


class _Shrink(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "fusionfeat.demo":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.run_demo.__defaults__ = SMALL + module.run_demo.__defaults__[len(SMALL):]

        spec.loader.exec_module = exec_module
        return spec


if __name__ == "__main__":
    import importlib.util

    sys.meta_path.insert(0, _Shrink())
    from fusionfeat.__main__ import run

    sys.exit(run())
