"""The compiler: policy AST -> resolved model -> diagnostics -> signed plan.

`check`, `compile_policy`, `analyze` and `BuildOptions` (compiler.facade) load on first use: importing
a submodule runs this file first, and the device imports compiler.plan and compiler.signing alone, which
must not bring in lark, the policy AST and the rules (40 ms of each device command's start).
"""

_FACADE = ("BuildOptions", "analyze", "check", "compile_policy")
__all__ = list(_FACADE)


def __getattr__(name: str):
    if name in _FACADE:
        from . import facade

        return getattr(facade, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
