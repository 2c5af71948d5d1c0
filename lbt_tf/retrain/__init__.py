"""Retraining, evaluation, export and prediction of a derived (searched) network.

Modes: `--mode=train` (trainer.run_train), `--mode=evaluate` (evaluate.run_evaluate),
`--mode=export` (export.run_export), `--mode=predict` (predict.run_predict).
"""
