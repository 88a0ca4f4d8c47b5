"""Each op's plain-lax reference and its hand-written forward and backward rule,
one module per op, readable on one screen: the reference (the autodiff path and
the oracle), `_op_fwd` (what is saved, and why), `_op_bwd`, `defvjp`. They import
only the argument checks and the window geometry (`funcnn.ops._args`,
`funcnn.ops._windows`); the public ops wire them up one level above.
"""
