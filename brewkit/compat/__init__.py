"""Compatibility layers: other distillation libraries' module layouts on top of brewkit.

:mod:`brewkit.compat.textbrewer` is TextBrewer's: a script written for ``textbrewer`` runs on brewkit when its
imports say ``brewkit.compat.textbrewer`` instead (``docs/textbrewer_compat.md``).
"""
