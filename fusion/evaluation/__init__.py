"""Evaluation of aligned embeddings beyond the training loop's point estimates (library code: no Lightning, no Hydra).

- retrieval: bootstrap intervals over test subjects and a shuffled-pairing baseline (fusion.evaluation.retrieval).
- probes: linear probes of each embedding on the manifest covariates (fusion.evaluation.probes).
- linear baselines: regularised CCA and PLS between the raw genomics and brain features (fusion.evaluation.linear).
The application wires them into the test stage (fusion.app.evaluation) and the encoder comparison (fusion.app.compare).
"""
