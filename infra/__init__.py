"""Cluster deployment: the container image, KubeRay manifests and cluster-launcher configs (docs/deploy.md).

The manifests are rendered from one typed spec (``infra/cluster.yaml``) by :mod:`infra.render` and checked
offline by :mod:`infra.validate`; nothing here talks to a cluster.
"""
