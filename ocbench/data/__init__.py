"""OpenCell data: raw file layout, annotation tables, the lazy FOV reader and its manifest.

Kept light on purpose: import the submodules (``ocbench.data.opencell``, ...) where needed.
"""
