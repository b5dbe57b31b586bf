"""WaFL's Grafana dashboards as code, their generated JSON and provisioning.

- ``dashboards.py`` builds the dashboards with grafana-foundation-sdk and writes
  ``dashboards/*.json`` (``python deploy/grafana/dashboards.py``; committed, checked by the tests);
- ``queries.py`` lists every panel's PromQL expression of the generated dashboards;
- ``provisioning/`` provisions both in docker-compose, ``kustomization.yaml`` ships the dashboards
  as a ConfigMap for the Grafana sidecar on Kubernetes.

Loaded by path from a checkout (tests/deploy_helpers.py); ``wafl grafana push``
(tools/grafana_push.py) uploads the generated dashboards.
"""
