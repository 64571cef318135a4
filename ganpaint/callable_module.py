"""Letting `ganpaint.train(...)` and `ganpaint.inpaint(...)` be called although `ganpaint.train` and
`ganpaint.inpaint` are also modules.

Importing a submodule makes it an attribute of its package, which would replace the public API
function of the same name. Each of those two modules therefore makes itself callable, forwarding
to the API function: `ganpaint.train("demo")` works before and after `import ganpaint.train.loop`.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, api_function: str) -> None:
    """Turn sys.modules[module_name] into a module that calls ganpaint.api.<api_function>."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from ganpaint import api

            return getattr(api, api_function)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
