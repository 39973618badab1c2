"""The classic (shallow) hashing baselines: closed-form / alternating solvers on feature vectors.

Cross-modal: CMFH, SCM (orth, seq), SePH (rnd, km), STMH. Image hashing: LSH, ITQ, SDH. Each module
subclasses :class:`methods.base.ClosedFormMethod` and cites its paper, equations and defaults.
"""
