"""Post-hoc explanations as pure functions: `method(apply_fn, params, x, target, **options)`.

See `xjax.explain.targets` for the meaning of `target`.
"""
