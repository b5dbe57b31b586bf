"""WaFL's Grafana dashboards as code, their generated JSON, provisioning and upload.

- ``dashboards.py`` builds the dashboards with grafana-foundation-sdk and writes
  ``dashboards/*.json`` (``python deploy/grafana/dashboards.py``; committed, checked by the tests);
- ``queries.py`` lists every panel's PromQL expression of the generated dashboards;
- ``push.py`` uploads the datasource and dashboards to a running Grafana with grafana-client;
- ``provisioning/`` provisions both in docker-compose, ``kustomization.yaml`` ships the dashboards
  as a ConfigMap for the Grafana sidecar on Kubernetes.

Importable as the package ``wafl_grafana`` (see pyproject.toml) or, from a checkout, by path
(tests/deploy_helpers.py).
"""
