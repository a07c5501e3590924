"""The environment a Ray cluster that serves sbir starts with: Ray Serve reads these in its own processes when
they start, so they belong to the cluster (a local cluster inherits them from `sbir`; a KubeRay cluster gets them
from the manifests' ConfigMap), not to one application's config.

* HAProxy in front of the ingress replicas instead of Serve's Python proxy (docs/serving.md#topology-and-why).
* HAProxy checks each replica every 2 s and takes it out after 2 failed checks, so a stopping ingress replica
  needs to keep answering only about 4 s before it closes; Ray's default drain of 30 s is sized for external load
  balancers and made every stop of the endpoint (Ctrl-C included) take half a minute.
"""

from __future__ import annotations

HAPROXY_CHECK_INTERVAL_S = 2
HAPROXY_CHECK_FALL = 2

SERVE_CLUSTER_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": f"{HAPROXY_CHECK_INTERVAL_S}s",
    "RAY_SERVE_HAPROXY_HEALTH_CHECK_FALL": str(HAPROXY_CHECK_FALL),
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(HAPROXY_CHECK_INTERVAL_S * HAPROXY_CHECK_FALL + 1),
}
