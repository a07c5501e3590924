"""Ray Data + Ray Train workloads (ingest, train, evaluate, embed a gallery).

Built on the pure-PyTorch core in `sbir`; arrives with the data and training issues.
"""
