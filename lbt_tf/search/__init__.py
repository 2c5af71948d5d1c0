"""LBT architecture search over the FasterSeg space: `unrolled` (the update of A through the
three equations, pure functions, and its gradient by definition; `darts` the gradient the search
computes, in DARTS' form, its two mixed products from `reverse_over_reverse` (exact), `hvp`
(forward-over-reverse, exact) or `finite_difference` (central differences)), `learner` (models as
functions of weight values, losses, batches), `updates` (replica mean, apply-if-finite),
`lbt_model.LBTSearch` (teacher + student in one Keras model, `train_step` = one LBT step),
`callbacks` (schedule, fallback, architecture log, checkpoints, progress line) and
`runner.run_search`."""
