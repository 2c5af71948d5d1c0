"""LBT architecture search over the FasterSeg space: `architect` (the unrolled update, pure
functions), `lbt_model.LBTSearch` (teacher + student in one Keras model, `train_step` = one LBT
step), `callbacks` (schedule, fallback, architecture log, checkpoints) and `runner.run_search`."""
