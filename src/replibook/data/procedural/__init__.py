"""The book's own data generators, one module per generator (components.md, section 2).

Every generator is deterministic given its seed, draws from a private NumPy generator
(never the global random state a chapter has seeded) and returns float tensors on the
requested device. Modules are imported directly::

    from replibook.data.procedural import masks
    holes = masks.free_form(100, ratio_bin=(0.2, 0.3), size=32, seed=0)   # (100, 1, 32, 32)
"""
