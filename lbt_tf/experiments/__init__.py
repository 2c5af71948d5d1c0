"""Experiments over whole searches: `compare` (FasterSeg vs LPT vs LBT, `--mode=compare`) and
`ratio_study` (keras-tuner over the pseudo-label ratio, λ and γ, `--mode=ratio_study`)."""
